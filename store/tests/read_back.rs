//! Reading a task back decodes its blocks lazily, one block at a time: the exchanges come in
//! recorded order with their ids, across many blocks and appends of every size, and an
//! iterator dropped early lets go of the store (it closes and reopens at once).

mod common;

use std::time::{Duration, Instant};

use deetune_store::{ExchangeId, ExchangeQuery, Store, TaskState};

#[test]
fn many_blocks_come_back_in_order() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path().join("s")).unwrap();
    store
        .put_task(&common::task("t-1", TaskState::Stopped, 1))
        .unwrap();
    let all = common::mixed(3000);
    let mut want = Vec::new();
    let mut at = 0;
    // Appends of varied sizes: blocks of 1 to 256 exchanges, interleaved with another task.
    for (i, size) in [1usize, 255, 256, 257, 3, 700, 1000, 100]
        .iter()
        .cycle()
        .enumerate()
    {
        if at >= all.len() {
            break;
        }
        let end = (at + size).min(all.len());
        let ids = store.append("t-1", &all[at..end]).unwrap();
        want.extend(ids.into_iter().zip(all[at..end].iter().cloned()));
        at = end;
        if i % 3 == 0 {
            store.append("t-2", &all[..2]).unwrap();
        }
    }
    for _ in 0..3 {
        let got: Vec<(ExchangeId, _)> = store.exchanges("t-1").map(Result::unwrap).collect();
        assert_eq!(got.len(), want.len());
        assert!(got == want, "same exchanges, same order, same ids");
    }
    let limited = store
        .find_exchanges(
            "t-1",
            &ExchangeQuery {
                interface: None,
                limit: Some(1001),
            },
        )
        .unwrap();
    assert!(limited[..] == want[..1001]);
    assert_eq!(store.exchanges("t-none").count(), 0);
}

#[test]
fn dropping_the_reader_early_stops_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("s");
    let store = Store::open(&dir).unwrap();
    store.append("t-1", &common::mixed(5000)).unwrap();
    for take in [0, 1, 300, 2000] {
        let got = store.exchanges("t-1").take(take).count();
        assert_eq!(got, take);
    }
    // An iterator kept alive past the store's drop holds sled open; dropped, it lets go.
    let it = store.exchanges("t-1");
    drop(it);
    drop(store);
    let start = Instant::now();
    let store = Store::open(&dir).unwrap();
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "reopened in {:?}",
        start.elapsed()
    );
    assert_eq!(store.exchanges("t-1").count(), 5001);
}
