//! Property: any exchange content (arbitrary bytes, any double) survives bundle write → read
//! and store → bundle → store → bundle byte for byte.

mod common;

use deetune_protocols::{Payload, RedisCommand, Request, RespValue, Response};
use deetune_store::{BundleHeader, BundleReader, BundleWriter, Store, TaskState};
use proptest::prelude::*;

fn exchange(args: Vec<Vec<u8>>, d: f64, i: i64) -> deetune_protocols::Exchange {
    let mut x = common::redis(1);
    x.request = Request::Redis(RedisCommand {
        args: args.into_iter().map(Payload).collect(),
        inline: false,
    });
    x.response = Some(Response::Redis(RespValue::Array(vec![
        RespValue::Double(d),
        RespValue::Integer(i),
    ])));
    x
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn any_content_round_trips(
        items in proptest::collection::vec(
            (proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 0..4),
             any::<f64>().prop_filter("finite", |d| d.is_finite()),
             any::<i64>()),
            1..20),
        zst in any::<bool>(),
    ) {
        let tmp = tempfile::tempdir().unwrap();
        let name = if zst { "p.jsonl.zst" } else { "p.jsonl" };
        let path = tmp.path().join(name);
        let xs: Vec<_> = items.into_iter().map(|(a, d, i)| exchange(a, d, i)).collect();
        let mut w = BundleWriter::create(
            &path,
            &BundleHeader::new(common::task("t-p", TaskState::Stopped, 3)),
        )
        .unwrap();
        for x in &xs {
            w.write(x).unwrap();
        }
        w.finish().unwrap();
        let back: Vec<_> = BundleReader::open(&path).unwrap().map(Result::unwrap).collect();
        prop_assert_eq!(&back, &xs);

        let store = Store::open(tmp.path().join("s")).unwrap();
        let imported = store.import_bundle(&path).unwrap();
        let again = tmp.path().join(format!("again-{name}"));
        store.export_bundle(&imported.task_id, &again).unwrap();
        prop_assert!(std::fs::read(&path).unwrap() == std::fs::read(&again).unwrap());
    }
}
