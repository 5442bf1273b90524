//! Redis decoder over byte streams recorded from a real redis-server
//! (`fixtures/streams/redis/make.sh`): snapshots of the decoded exchanges, each fixture also
//! decoded in 1-byte chunks and at every two-way split.

mod common;

use deetune_protocols::{
    DecoderConfig, Direction, Exchange, Protocol, RedisDecoder, Request, RespValue, Response,
    StreamDecoder,
};
use serde_json::Value;

/// Snapshot form: long strings and large values are replaced by their length and a hash, so
/// snapshots stay readable while any change still shows.
fn compact(exchanges: &[Exchange]) -> Value {
    fn fnv(s: &str) -> String {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in s.bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        format!("{h:016x}")
    }
    fn walk(v: &mut Value) {
        let text = v.to_string();
        if text.len() > 4096 || matches!(v, Value::String(s) if s.len() > 200) {
            *v = Value::String(format!(
                "<elided: {} json bytes, fnv {}>",
                text.len(),
                fnv(&text)
            ));
            return;
        }
        match v {
            Value::Array(items) => items.iter_mut().for_each(walk),
            Value::Object(map) => map.values_mut().for_each(walk),
            _ => {}
        }
    }
    let mut v = serde_json::to_value(exchanges).expect("exchanges serialize");
    if let Value::Array(items) = &mut v {
        for x in items {
            walk(x);
        }
    }
    v
}

fn check(name: &str) -> Vec<Exchange> {
    let path = common::fixture("redis", name);
    let exchanges = common::assert_split_invariant(Protocol::Redis, &path);
    insta::assert_json_snapshot!(name, compact(&exchanges));
    exchanges
}

fn names(ex: &[Exchange]) -> Vec<String> {
    ex.iter().map(Exchange::interface).collect()
}

#[test]
fn basic_commands_pair_in_order() {
    let ex = check("basic");
    // redis-cli asks COMMAND DOCS first (a 200 KB nested reply), then our commands.
    assert_eq!(ex[0].interface(), "COMMAND");
    assert!(matches!(&ex[0].response, Some(Response::Redis(RespValue::Array(a))) if a.len() > 100));
    assert!(
        ex.iter().all(|e| e.flags.is_clean()),
        "no marks on a clean recording"
    );
    let get_missing = ex.iter().find(|e| matches!(&e.request, Request::Redis(c) if c.args.get(1).is_some_and(|a| a.as_bytes() == b"missing"))).expect("GET missing");
    assert_eq!(get_missing.response, Some(Response::Redis(RespValue::Null)));
}

#[test]
fn multi_exec_queued_replies_pair_with_their_commands() {
    let ex = check("multi");
    let n = names(&ex);
    let exec = n.iter().position(|x| x == "EXEC").expect("EXEC");
    assert_eq!(
        &n[exec - 4..=exec],
        ["MULTI", "SET", "INCR", "LPUSH", "EXEC"]
    );
    assert_eq!(
        ex[exec - 2].response,
        Some(Response::Redis(RespValue::Simple("QUEUED".into())))
    );
    assert!(
        matches!(&ex[exec].response, Some(Response::Redis(RespValue::Array(a))) if a.len() == 3)
    );
}

#[test]
fn resp3_after_hello() {
    let ex = check("resp3");
    assert!(ex.iter().any(|e| e.interface() == "HELLO"));
    assert!(ex
        .iter()
        .any(|e| matches!(&e.response, Some(Response::Redis(RespValue::Map(_))))));
    assert!(ex
        .iter()
        .any(|e| matches!(&e.response, Some(Response::Redis(RespValue::Set(_))))));
    assert!(ex
        .iter()
        .any(|e| matches!(&e.response, Some(Response::Redis(RespValue::Double(_))))));
    assert!(ex.iter().any(|e| matches!(
        &e.response,
        Some(Response::Redis(RespValue::Verbatim { .. }))
    )));
}

#[test]
fn pubsub_messages_are_unpaired_exchanges_of_the_subscription() {
    for name in ["pubsub", "pubsub-resp3"] {
        let ex = check(name);
        // SUBSCRIBE news sports: first confirmation pairs, the second and 3 messages follow.
        let sub = ex
            .iter()
            .position(|e| e.interface() == "SUBSCRIBE")
            .expect("SUBSCRIBE");
        assert!(!ex[sub].flags.unpaired, "{name}");
        let pushes: Vec<_> = ex.iter().filter(|e| e.flags.unpaired).collect();
        assert_eq!(pushes.len(), 4, "{name}: 1 confirmation + 3 messages");
        assert!(
            pushes.iter().all(|e| e.interface() == "SUBSCRIBE"),
            "{name}"
        );
    }
}

#[test]
fn big_value_kept_whole_under_the_cap() {
    let ex = check("big");
    let set = ex.iter().find(|e| e.interface() == "SET").expect("SET");
    let Request::Redis(cmd) = &set.request else {
        panic!("redis request")
    };
    assert_eq!(cmd.args[2].len(), 300_000);
    assert!(set.flags.is_clean());
}

#[test]
fn big_value_cut_at_max_body() {
    // Guards bounded memory: a value over the cap is cut, flagged, and the stream goes on.
    let config = DecoderConfig {
        max_body: 1000,
        ..DecoderConfig::default()
    };
    let path = common::fixture("redis", "big");
    let ex = common::assert_split_invariant_with(Protocol::Redis, config, &path);
    let set = ex.iter().find(|e| e.interface() == "SET").expect("SET");
    assert!(set.flags.truncated);
    let get = ex.iter().find(|e| e.interface() == "GET").expect("GET");
    assert!(get.flags.truncated);
    assert!(matches!(&get.response, Some(Response::Redis(RespValue::Bulk(b))) if b.len() == 1000));
    let strlen = ex
        .iter()
        .find(|e| e.interface() == "STRLEN")
        .expect("STRLEN");
    assert_eq!(
        strlen.response,
        Some(Response::Redis(RespValue::Integer(300_000)))
    );
    assert!(strlen.flags.is_clean());
}

#[test]
fn inline_commands() {
    let ex = check("inline");
    assert_eq!(names(&ex), ["PING", "SET", "GET", "ECHO", "GET"]);
    assert!(ex
        .iter()
        .all(|e| matches!(&e.request, Request::Redis(c) if c.inline)));
}

#[test]
fn benchmark_pipelining() {
    for name in ["pipeline", "pipeline.2", "pipeline.3"] {
        let ex = check(name);
        assert!(
            ex.iter()
                .all(|e| e.response.is_some() && e.flags.is_clean()),
            "{name}"
        );
    }
    let sets = common::decode(
        Protocol::Redis,
        &common::load(&common::fixture("redis", "pipeline.2")),
        common::Chunking::AsRecorded,
    );
    assert!(
        sets.len() >= 200,
        "200 pipelined commands, got {}",
        sets.len()
    );
}

#[test]
fn gaps_are_marked_and_the_stream_resyncs() {
    let ex = check("gap");
    assert!(ex.iter().any(|e| e.flags.gap));
    // The reply of the lost GET comes out unpaired and flagged as part of the gap.
    assert!(ex
        .iter()
        .any(|e| e.flags.unpaired && e.flags.gap && e.response.is_some()));
    // After the losses the decoder is back in step: the last command pairs cleanly.
    let last = ex.last().expect("exchanges");
    assert_eq!(last.interface(), "EXISTS");
    assert_eq!(last.response, Some(Response::Redis(RespValue::Integer(0))));
    assert!(last.flags.is_clean());
}

#[test]
fn garbage_never_panics_and_resyncs() {
    let mut d = RedisDecoder::new(DecoderConfig::default());
    d.push(
        Direction::Request,
        1,
        b"*zz\r\n\x00\xff*2\r\n$3\r\nGET\r\n$1\r\nk\r\n",
    );
    d.push(Direction::Response, 2, b"?bad\r\n$1\r\nv\r\n");
    let mut out = Vec::new();
    d.drain(&mut out);
    d.close(3);
    d.drain(&mut out);
    let get = out
        .iter()
        .find(|e| e.interface() == "GET")
        .expect("GET after garbage");
    assert!(get.flags.unsupported);
    assert_eq!(
        get.response,
        Some(Response::Redis(RespValue::Bulk("v".into())))
    );
}

#[test]
fn unanswered_command_at_close_is_unpaired() {
    let mut d = RedisDecoder::new(DecoderConfig::default());
    d.push(
        Direction::Request,
        1,
        b"*1\r\n$4\r\nPING\r\n*2\r\n$4\r\nECHO\r\n$1\r\na\r\n",
    );
    d.push(Direction::Response, 2, b"+PONG\r\n$1\r");
    d.close(3);
    let mut out = Vec::new();
    d.drain(&mut out);
    assert_eq!(out.len(), 2);
    assert!(out[0].flags.is_clean());
    assert!(out[1].flags.unpaired && out[1].response.is_none());
}
