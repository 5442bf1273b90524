//! RESP round trip against an independent implementation: random RESP3 frames encoded by the
//! `redis-protocol` crate, decoded by our Redis decoder (fed as server replies, in random
//! chunks) must give the same values, in the same order.

use deetune_protocols::{
    DecoderConfig, Direction, Payload, RedisDecoder, RespValue, Response, StreamDecoder,
};
use proptest::prelude::*;
use redis_protocol::resp3::types::{OwnedFrame, Resp3Frame as _, VerbatimStringFormat};

fn leaf() -> impl Strategy<Value = OwnedFrame> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..40).prop_map(|data| OwnedFrame::BlobString {
            data,
            attributes: None
        }),
        "[a-zA-Z0-9 ]{0,20}".prop_map(|s| OwnedFrame::SimpleString {
            data: s.into_bytes(),
            attributes: None
        }),
        "ERR [a-z ]{0,20}".prop_map(|data| OwnedFrame::SimpleError {
            data,
            attributes: None
        }),
        any::<i64>().prop_map(|data| OwnedFrame::Number {
            data,
            attributes: None
        }),
        Just(OwnedFrame::Null),
        any::<bool>().prop_map(|data| OwnedFrame::Boolean {
            data,
            attributes: None
        }),
        (-1e9f64..1e9).prop_map(|data| OwnedFrame::Double {
            data,
            attributes: None
        }),
        "-?[1-9][0-9]{0,40}".prop_map(|s| OwnedFrame::BigNumber {
            data: s.into_bytes(),
            attributes: None
        }),
        "[a-z\n]{0,20}".prop_map(|s| OwnedFrame::VerbatimString {
            data: s.into_bytes(),
            format: VerbatimStringFormat::Text,
            attributes: None
        }),
        proptest::collection::vec(any::<u8>(), 0..20).prop_map(|data| OwnedFrame::BlobError {
            data,
            attributes: None
        }),
    ]
}

fn frame() -> impl Strategy<Value = OwnedFrame> {
    leaf().prop_recursive(3, 40, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(|data| OwnedFrame::Array {
                data,
                attributes: None
            }),
            proptest::collection::vec(inner.clone(), 1..4).prop_map(|data| OwnedFrame::Push {
                data,
                attributes: None
            }),
            proptest::collection::vec(("[a-z]{1,8}", inner), 0..4).prop_map(|kv| {
                OwnedFrame::Map {
                    data: kv
                        .into_iter()
                        .map(|(k, v)| {
                            (
                                OwnedFrame::SimpleString {
                                    data: k.into_bytes(),
                                    attributes: None,
                                },
                                v,
                            )
                        })
                        .collect(),
                    attributes: None,
                }
            }),
        ]
    })
}

/// What our decoder should produce for `f`.
fn expected(f: &OwnedFrame) -> RespValue {
    match f {
        OwnedFrame::BlobString { data, .. } => RespValue::Bulk(Payload(data.clone())),
        OwnedFrame::SimpleString { data, .. } => {
            RespValue::Simple(String::from_utf8_lossy(data).into_owned())
        }
        OwnedFrame::SimpleError { data, .. } => RespValue::Error(data.clone()),
        OwnedFrame::Number { data, .. } => RespValue::Integer(*data),
        OwnedFrame::Null => RespValue::Null,
        OwnedFrame::Boolean { data, .. } => RespValue::Boolean(*data),
        OwnedFrame::Double { data, .. } => RespValue::Double(*data),
        OwnedFrame::BigNumber { data, .. } => {
            RespValue::BigNumber(String::from_utf8_lossy(data).into_owned())
        }
        OwnedFrame::VerbatimString { data, .. } => RespValue::Verbatim {
            format: "txt".into(),
            text: Payload(data.clone()),
        },
        OwnedFrame::BlobError { data, .. } => RespValue::BulkError(Payload(data.clone())),
        OwnedFrame::Array { data, .. } => RespValue::Array(data.iter().map(expected).collect()),
        OwnedFrame::Push { data, .. } => RespValue::Push(data.iter().map(expected).collect()),
        OwnedFrame::Map { data, .. } => RespValue::Map(
            data.iter()
                .map(|(k, v)| (expected(k), expected(v)))
                .collect(),
        ),
        OwnedFrame::Set { data, .. } => RespValue::Set(data.iter().map(expected).collect()),
        other => panic!("not generated: {other:?}"),
    }
}

fn encode(f: &OwnedFrame) -> Vec<u8> {
    let mut buf = vec![0; f.encode_len(false)];
    let n = redis_protocol::resp3::encode::complete::encode(&mut buf, f, false).expect("encode");
    buf.truncate(n);
    buf
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn frames_encoded_by_redis_protocol_decode_identically(
        frames in proptest::collection::vec(frame(), 1..6),
        chunk in 1usize..64,
    ) {
        let bytes: Vec<u8> = frames.iter().flat_map(encode).collect();
        let mut d = RedisDecoder::new(DecoderConfig::default());
        for c in bytes.chunks(chunk) {
            d.push(Direction::Response, 1, c);
        }
        d.close(2);
        let mut out = Vec::new();
        d.drain(&mut out);
        let got: Vec<RespValue> = out
            .into_iter()
            .map(|e| match e.response {
                Some(Response::Redis(v)) => v,
                other => panic!("no redis response: {other:?}"),
            })
            .collect();
        let want: Vec<RespValue> = frames.iter().map(expected).collect();
        prop_assert_eq!(got, want);
    }
}
