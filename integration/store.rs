//! The online store on a real RocksDB: atomic state + offsets, reopen, checkpoints, lock and format errors.

use sailstream::schema::{Action, IdEmbedding, Item, ItemEmbedding};
use sailstream::store::{HistoryEntry, ItemStats, Store, TeacherTarget, cf};
use sailstream::{Error, Fault};

fn item(id: &str, version: u64) -> Item {
    serde_json::from_value(serde_json::json!({
        "item_id": id, "title": format!("title {id} v{version}"), "tags": ["a", "b"],
        "created_at": 1_700_000_000_000i64, "version": version
    }))
    .unwrap()
}

#[test]
fn batch_writes_state_and_offsets_together_and_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    {
        let store = Store::open(&path).unwrap();
        let mut b = store.batch();
        b.put_item(&item("v1", 2)).unwrap();
        // Two partitions contribute partial counters for the same item; reads sum them.
        b.put_item_stats(
            "v1",
            "sail.behaviours",
            0,
            &ItemStats {
                events: 3,
                positives: 1,
                distinct_users: 2,
                first_ts: 5,
                last_ts: 9,
            },
        )
        .unwrap();
        b.put_item_stats(
            "v1",
            "sail.behaviours",
            1,
            &ItemStats {
                events: 2,
                positives: 2,
                distinct_users: 1,
                first_ts: 3,
                last_ts: 7,
            },
        )
        .unwrap();
        let h = vec![HistoryEntry {
            item_id: "v1".into(),
            action: Action::Like,
            ts: 7,
            dwell_ms: 0,
            rating: None,
        }];
        b.put_user_lists("u1", &h, &h).unwrap();
        b.put_id_embedding(&IdEmbedding {
            item_id: "v1".into(),
            space: "gid".into(),
            vector: vec![0.5, -1.0],
            version: 4,
            ts: 1,
        })
        .unwrap();
        b.set_offset("sail.items", 3, 120).unwrap();
        b.set_offset("sail.behaviours", 0, 7).unwrap();
        // Nothing is visible before commit.
        assert_eq!(store.offset("sail.items", 3).unwrap(), None);
        assert!(store.item("v1").unwrap().is_none());
        b.commit().unwrap();
    }
    let store = Store::open(&path).unwrap();
    assert_eq!(store.item("v1").unwrap().unwrap(), item("v1", 2));
    assert_eq!(
        store.item_stats("v1").unwrap().unwrap(),
        ItemStats {
            events: 5,
            positives: 3,
            distinct_users: 3,
            first_ts: 3,
            last_ts: 9
        }
    );
    assert_eq!(
        store
            .item_stats_partial("v1", "sail.behaviours", 1)
            .unwrap()
            .unwrap()
            .events,
        2
    );
    assert_eq!(
        store.all_item_stats(10).unwrap().len(),
        1,
        "partials grouped"
    );
    assert!(
        store.item_stats("v").unwrap().is_none(),
        "prefix of another id"
    );
    assert_eq!(store.user_history("u1").unwrap()[0].action, Action::Like);
    assert_eq!(store.user_positives("u1").unwrap().len(), 1);
    assert_eq!(
        store.id_embedding("v1", "gid").unwrap().unwrap(),
        (4, 1, vec![0.5, -1.0])
    );
    let offsets = store.offsets().unwrap();
    assert_eq!(offsets.get(&("sail.items".to_string(), 3)), Some(&120));
    assert_eq!(offsets.get(&("sail.behaviours".to_string(), 0)), Some(&7));
    let counts: std::collections::HashMap<_, _> = store.key_counts().unwrap().into_iter().collect();
    assert_eq!(counts[cf::ITEMS], 1);
    assert_eq!(counts[cf::OFFSETS], 2);
    assert_eq!(counts[cf::META], 1, "format version");
}

#[test]
fn a_second_writer_gets_a_clear_locked_error() {
    let dir = tempfile::tempdir().unwrap();
    let _first = Store::open(dir.path()).unwrap();
    let err = Store::open(dir.path()).unwrap_err();
    assert!(matches!(err, Error::StoreLocked { .. }), "{err:?}");
    assert_eq!(err.fault(), Fault::User);
    assert!(err.to_string().contains("locked"), "{err}");
    // Readers are not blocked by the writer.
    Store::open_read_only(dir.path()).unwrap();
}

/// A list entry for the upgrade tests.
fn entry(id: &str, ts: i64, action: Action) -> HistoryEntry {
    HistoryEntry {
        item_id: id.into(),
        action,
        ts,
        dwell_ms: 7,
        rating: None,
    }
}

/// A format-1 store (one list value per user) is upgraded in place by the first writer; readers refuse it until
/// then with an error that says so.
#[test]
fn a_format_1_store_is_upgraded_by_a_writer() {
    let dir = tempfile::tempdir().unwrap();
    let history = vec![
        entry("a", 10, Action::Play),
        entry("b", 10, Action::Like),
        entry("c", 30, Action::Play),
    ];
    let positives = vec![entry("b", 10, Action::Like)];
    {
        let store = Store::open(dir.path()).unwrap();
        store
            .write_format1_list(cf::USER_HISTORIES, "u1", &history)
            .unwrap();
        store
            .write_format1_list(cf::USER_POSITIVES, "u1", &positives)
            .unwrap();
        store
            .write_format1_list(cf::USER_HISTORIES, "u2", &history[2..])
            .unwrap();
        store.force_format_version(1).unwrap();
    }
    let err = Store::open_read_only(dir.path()).unwrap_err();
    assert!(
        matches!(err, Error::StoreFormatTooOld { found: 1, .. }),
        "{err:?}"
    );
    assert_eq!(err.fault(), Fault::User);
    assert!(err.to_string().contains("sailstream worker"), "{err}");

    drop(Store::open(dir.path()).unwrap());
    let store = Store::open_read_only(dir.path()).unwrap();
    assert_eq!(store.user_history("u1").unwrap(), history);
    assert_eq!(store.user_positives("u1").unwrap(), positives);
    assert_eq!(store.user_history("u2").unwrap(), history[2..]);
    assert_eq!(
        store.list_users(cf::USER_HISTORIES, 10).unwrap(),
        ["u1", "u2"]
    );
    assert_eq!(store.list_users(cf::USER_POSITIVES, 10).unwrap(), ["u1"]);
}

/// Read-only and secondary opens of a store of format `found` both fail with StoreFormatTooOld.
fn readers_refuse_an_old_format(path: &std::path::Path, scratch: &std::path::Path, found: u32) {
    for err in [
        Store::open_read_only(path).unwrap_err(),
        Store::open_secondary(path, scratch).unwrap_err(),
    ] {
        assert!(
            matches!(err, Error::StoreFormatTooOld { found: f, .. } if f == found),
            "{err:?}"
        );
    }
}

/// A format-3 store (each list's head in its own family) is refused by readers, and a writer moves every
/// positives head into the value under the history's head key: lists read back unchanged, the heads keep each
/// list's count and numbering, and the positives family is left with entries only.
#[test]
fn a_format_3_store_gets_merged_list_heads_from_a_writer() {
    let (dir, scratch) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let history = vec![
        entry("a", 10, Action::Play),
        entry("b", 10, Action::Like),
        entry("c", 30, Action::Like),
    ];
    let positives = vec![history[1].clone(), history[2].clone()];
    {
        let store = Store::open(dir.path()).unwrap();
        store
            .write_format3_lists("u1", &history, &positives)
            .unwrap();
        store.write_format3_lists("u2", &history[..1], &[]).unwrap();
        // More users than one upgrade batch holds (1,000), so that the upgrade commits several.
        for n in 0..1_500 {
            store
                .write_format3_lists(&format!("v{n:04}"), &history[1..], &positives[..1])
                .unwrap();
        }
        store.force_format_version(3).unwrap();
    }
    readers_refuse_an_old_format(dir.path(), scratch.path(), 3);

    let count = |s: &Store, family| s.key_count(family).unwrap();
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.user_history("u1").unwrap(), history);
    assert_eq!(store.user_positives("u1").unwrap(), positives);
    assert_eq!(store.user_history("u2").unwrap(), history[..1]);
    assert!(store.user_positives("u2").unwrap().is_empty());
    let heads = store.user_heads("u1").unwrap().unwrap();
    assert_eq!(
        (heads.history.count, heads.history.next_seq),
        (3, 3),
        "{heads:?}"
    );
    assert_eq!(
        (heads.positives.count, heads.positives.next_seq),
        (2, 2),
        "{heads:?}"
    );
    let u2 = store.user_heads("u2").unwrap().unwrap();
    assert_eq!((u2.history.count, u2.positives.count), (1, 0), "{u2:?}");
    for user in ["v0000", "v0999", "v1000", "v1499"] {
        assert_eq!(store.user_history(user).unwrap(), history[1..], "{user}");
        assert_eq!(
            store.user_positives(user).unwrap(),
            positives[..1],
            "{user}"
        );
    }
    assert_eq!(count(&store, cf::USER_POSITIVES), 2 + 1_500, "entries only");
    assert_eq!(
        count(&store, cf::USER_HISTORIES),
        (2 + 4) + 1_500 * 3,
        "a head and the entries of each user"
    );
    assert_eq!(
        store.list_users(cf::USER_POSITIVES, 2).unwrap(),
        ["u1", "v0000"]
    );
    drop(store);
    let reader = Store::open_read_only(dir.path()).unwrap();
    assert_eq!(reader.user_positives("u1").unwrap(), positives);
}

/// A format-2 store (no item stamps) is refused by readers, opens for them without the family, and a writer
/// stamps every embedded item in place. Every item-level write then changes the item's stamp.
#[test]
fn a_format_2_store_gets_item_stamps_from_a_writer() {
    let (dir, scratch) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let embedding = |id: &str| ItemEmbedding {
        item_id: id.into(),
        model: "m".into(),
        model_version: "1".into(),
        item_version: 1,
        vector: vec![1.0, 0.0],
        semantic_ids: vec![],
        ts: 1,
    };
    {
        let mut store = Store::open(dir.path()).unwrap();
        let mut batch = store.batch();
        batch.put_item_embedding(&embedding("a")).unwrap();
        batch.put_item_embedding(&embedding("b")).unwrap();
        batch.commit().unwrap();
        store.drop_family(cf::ITEM_STAMPS).unwrap();
        store.force_format_version(2).unwrap();
    }
    readers_refuse_an_old_format(dir.path(), scratch.path(), 2);

    let store = Store::open(dir.path()).unwrap();
    let stamps = |store: &Store| store.view().item_stamps(&["a", "b", "c"]).unwrap();
    let upgraded = stamps(&store);
    assert!(
        upgraded[0].is_some() && upgraded[1].is_some(),
        "{upgraded:?}"
    );
    assert_eq!(upgraded[2], None, "c was never written");

    let mut seen = vec![upgraded[0].unwrap()];
    let mut write = |change: &dyn Fn(&mut sailstream::store::StateBatch<'_>)| {
        let mut batch = store.batch();
        change(&mut batch);
        batch.commit().unwrap();
        let now = stamps(&store)[0].unwrap();
        assert!(!seen.contains(&now), "{now} repeats one of {seen:?}");
        seen.push(now);
    };
    write(&|b| b.put_item_embedding(&embedding("a")).unwrap());
    write(&|b| b.put_semantic_ids("a", "1", &[1, 2]).unwrap());
    write(&|b| {
        b.put_teacher_target(
            "a",
            &TeacherTarget {
                kind: "seq2item".into(),
                source: "test".into(),
                samples: 1,
                ts: 1,
                vector: vec![0.0, 1.0],
            },
        )
        .unwrap()
    });
    write(&|b| b.delete_teacher_target("a", "seq2item").unwrap());
    assert_eq!(stamps(&store)[1], upgraded[1], "b was not written");
    drop(store);
    let reader = Store::open_read_only(dir.path()).unwrap();
    assert_eq!(stamps(&reader)[0], seen.last().copied());
}

/// A reader that opens a store while its writer is still creating the families (current format, one missing)
/// gets a clear error at open, not a failure on a later read.
#[test]
fn a_reader_of_a_store_still_being_created_says_so() {
    let dir = tempfile::tempdir().unwrap();
    Store::open(dir.path())
        .unwrap()
        .drop_family(cf::ITEM_STAMPS)
        .unwrap();
    let err = Store::open_read_only(dir.path()).unwrap_err();
    assert!(err.to_string().contains("still creating"), "{err}");
    assert!(err.to_string().contains(cf::ITEM_STAMPS), "{err}");
}

#[test]
fn a_store_from_a_newer_format_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    Store::open(dir.path())
        .unwrap()
        .force_format_version(99)
        .unwrap();
    let err = Store::open(dir.path()).unwrap_err();
    match &err {
        Error::StoreFormatTooNew {
            found, supported, ..
        } => {
            assert_eq!(*found, 99);
            assert_eq!(*supported, sailstream::store::FORMAT_VERSION);
        }
        other => panic!("expected StoreFormatTooNew, got {other:?}"),
    }
    assert!(err.to_string().contains("upgrade"), "{err}");
}

#[test]
fn checkpoint_is_a_consistent_openable_copy() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("live")).unwrap();
    let mut b = store.batch();
    for i in 0..1000 {
        b.put_item(&item(&format!("v{i:04}"), 1)).unwrap();
    }
    b.set_offset("sail.items", 0, 1000).unwrap();
    b.commit().unwrap();
    let dest = dir.path().join("cp");
    store.checkpoint(&dest).unwrap();
    // Later writes do not reach the checkpoint.
    let mut b = store.batch();
    b.put_item(&item("late", 1)).unwrap();
    b.set_offset("sail.items", 0, 1001).unwrap();
    b.commit().unwrap();

    let copy = Store::open_read_only(&dest).unwrap();
    assert_eq!(copy.ids(cf::ITEMS, 10_000).unwrap().len(), 1000);
    assert_eq!(copy.offset("sail.items", 0).unwrap(), Some(1000));
    assert!(copy.item("late").unwrap().is_none());
    assert!(
        store.checkpoint(&dest).is_err(),
        "an existing destination is refused"
    );
}

#[test]
fn read_only_open_of_a_non_store_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let err = Store::open_read_only(dir.path()).unwrap_err();
    assert!(err.to_string().contains("not a sailstream store"), "{err}");
}

/// The record of deleted interests marks answers by generation: nothing new, exactly the users of the
/// generations after the one asked about, or "too many" once the record no longer reaches back that far.
#[test]
fn deleted_interests_marks_are_told_by_generation() {
    use sailstream::store::Unmarked;

    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let start = store.interests_unmarked_generation();
    assert_eq!(
        store.interests_unmarked_since(start),
        (Unmarked::Nothing, start)
    );
    // A batch that deletes no mark is no generation.
    let mut b = store.batch();
    b.put_interests_pending("a").unwrap();
    b.put_interests_pending("b").unwrap();
    b.commit().unwrap();
    assert_eq!(store.interests_unmarked_generation(), start);

    let mut b = store.batch();
    b.delete_interests_pending("a").unwrap();
    b.commit().unwrap();
    let mut b = store.batch();
    b.delete_interests_pending("b").unwrap();
    b.delete_interests_pending("c").unwrap();
    b.commit().unwrap();
    let now = store.interests_unmarked_generation();
    assert_eq!(now, start + 2);
    let names = |u: Unmarked| match u {
        Unmarked::Users(mut users) => {
            users.sort();
            users
        }
        other => panic!("expected users, got {other:?}"),
    };
    assert_eq!(
        names(store.interests_unmarked_since(start).0),
        ["a", "b", "c"]
    );
    assert_eq!(
        names(store.interests_unmarked_since(start + 1).0),
        ["b", "c"]
    );
    assert_eq!(
        store.interests_unmarked_since(now),
        (Unmarked::Nothing, now)
    );

    // One batch deleting more marks than the record keeps: the record drops whole generations, so a reader from
    // before them hears "too many", never a partial list.
    let mut b = store.batch();
    for i in 0..70_000 {
        b.delete_interests_pending(&format!("bulk{i}")).unwrap();
    }
    b.commit().unwrap();
    let (answer, at) = store.interests_unmarked_since(now);
    assert_eq!((answer, at), (Unmarked::TooMany, now + 1));
    let mut b = store.batch();
    b.delete_interests_pending("d").unwrap();
    b.commit().unwrap();
    assert_eq!(names(store.interests_unmarked_since(now + 1).0), ["d"]);
    assert_eq!(store.interests_unmarked_since(now).0, Unmarked::TooMany);
    assert_eq!(store.interests_unmarked_since(start).0, Unmarked::TooMany);
}
