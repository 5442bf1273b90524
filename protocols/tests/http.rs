//! HTTP decoder tests over fixtures captured from a real nginx (see
//! `fixtures/streams/http/README.md`).

mod common;

use common::{load, split_offsets, Chunking, Record};
use deetune_protocols::{Direction, Protocol};

/// Guards the harness itself: split offsets cover every byte of a small stream.
#[test]
fn harness_split_offsets_cover_small_streams() {
    let records = vec![
        Record::Data {
            dir: Direction::Request,
            data: b"abc".to_vec(),
        },
        Record::Gap {
            dir: Direction::Response,
            len: 5,
        },
        Record::Data {
            dir: Direction::Response,
            data: b"de".to_vec(),
        },
    ];
    assert_eq!(split_offsets(&records), vec![1, 2, 3, 4]);
    let _ = common::decode(Protocol::Http, &records, Chunking::SplitAt(2));
    let _ = load;
}
