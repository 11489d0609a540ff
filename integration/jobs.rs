//! DataFusion jobs over the offline log written by the real ingest path, checked against independent
//! computations in the test.

mod harness;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use arrow::array::AsArray;
use sailstream::schema::ItemEmbedding;

const DAY: i64 = 86_400_000;
const T0: i64 = 1_750_000_000_000;

struct Ev {
    user: String,
    item: String,
    action: &'static str,
    dwell: u64,
    ts: i64,
    rating: Option<f64>,
}

/// The default [positives], re-stated here on purpose (not calling the library).
fn positive(e: &Ev) -> bool {
    ["like", "share", "comment", "favorite", "follow", "finish"].contains(&e.action)
        || (e.action == "play" && e.dwell >= 10_000)
        || e.rating.is_some_and(|r| r >= 4.0)
}

fn events() -> Vec<Ev> {
    let actions = [
        "impression",
        "play",
        "like",
        "skip",
        "finish",
        "rate",
        "share",
        "click",
    ];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n
    };
    (0..3_000)
        .map(|i| {
            let action = actions[next(actions.len() as u64) as usize];
            Ev {
                user: format!("u{}", next(40)),
                item: format!("i{:02}", next(25)),
                action,
                dwell: next(30_000),
                // Spread over 6 days so that the 1-day window matters.
                ts: T0 + next(6 * DAY as u64) as i64 + i,
                rating: (action == "rate").then(|| 1.0 + next(5) as f64),
            }
        })
        .collect()
}

fn bin(dir: &Path) -> Command {
    let mut c = harness::sailstream();
    c.env("SAILSTREAM__STORE__PATH", dir.join("store"))
        .env("SAILSTREAM__OFFLINE_LOG__PATH", dir.join("log"))
        .env("SAILSTREAM__JOBS__OUTPUT_DIR", dir.join("exports"))
        .env("SAILSTREAM__EMBED__ENABLED", "false")
        .env("SAILSTREAM__METRICS__ENABLED", "false");
    c
}

/// An item vector written straight into the store, for fixtures whose expected outputs are worked out by hand.
fn hand_embedding(id: &str, v: &[f32]) -> ItemEmbedding {
    ItemEmbedding {
        item_id: id.into(),
        model: "hand".into(),
        model_version: "1".into(),
        item_version: 1,
        vector: v.to_vec(),
        semantic_ids: vec![],
        ts: T0,
    }
}

fn run(c: &mut Command) -> String {
    let out = c.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    stderr
}

#[test]
fn copairs_match_an_independent_computation() {
    let dir = tempfile::tempdir().unwrap();
    let evs = events();
    let file = dir.path().join("behaviours.jsonl");
    let lines: Vec<String> = evs
        .iter()
        .map(|e| {
            let mut v = serde_json::json!({"user_id": e.user, "item_id": e.item, "action": e.action,
                "dwell_ms": e.dwell, "ts": e.ts});
            if let Some(r) = e.rating {
                v["rating"] = r.into();
            }
            v.to_string()
        })
        .collect();
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();

    // No log yet: a clear error, exit 2.
    let out = bin(dir.path())
        .args(["job", "run", "copairs"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no behaviour segments"));

    run(bin(dir.path()).args([
        "replay",
        "--file",
        &format!("{}:sail.behaviours", file.display()),
    ]));
    let stderr = run(bin(dir.path()).args(["job", "run", "copairs"]));
    assert!(stderr.contains("job copairs: "), "{stderr}");

    // Reference: every pair of one user's positives on two different items at most a day apart.
    let mut by_user: BTreeMap<&str, Vec<&Ev>> = BTreeMap::new();
    for e in evs.iter().filter(|e| positive(e)) {
        by_user.entry(&e.user).or_default().push(e);
    }
    let mut want: BTreeMap<(String, String), (BTreeSet<&str>, u64)> = BTreeMap::new();
    for (user, list) in &by_user {
        for a in list {
            for b in list {
                if a.item < b.item && (a.ts - b.ts).abs() <= DAY {
                    let e = want.entry((a.item.clone(), b.item.clone())).or_default();
                    e.0.insert(user);
                    e.1 += 1;
                }
            }
        }
    }
    want.retain(|_, (users, _)| users.len() >= 2);
    assert!(
        want.len() > 50,
        "the fixture should produce many pairs, got {}",
        want.len()
    );

    let mut got: BTreeMap<(String, String), (u64, u64)> = BTreeMap::new();
    for batch in harness::read_parquet_dir(&dir.path().join("exports/copairs"), false) {
        let a = harness::strings(&batch, "item_a");
        let b = harness::strings(&batch, "item_b");
        let users = harness::primitives::<arrow::datatypes::Int64Type>(&batch, "users");
        let co = harness::primitives::<arrow::datatypes::Int64Type>(&batch, "co_events");
        for i in 0..batch.num_rows() {
            got.insert(
                (a.value(i).into(), b.value(i).into()),
                (users.value(i) as u64, co.value(i) as u64),
            );
        }
    }
    let want: BTreeMap<(String, String), (u64, u64)> = want
        .into_iter()
        .map(|(k, (u, c))| (k, (u.len() as u64, c)))
        .collect();
    assert_eq!(got, want);
}

#[test]
fn semantic_ids_recover_clusters_and_match_the_stored_codebooks() {
    use sailstream::store::Store;

    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("store")).unwrap();
    // Three tight, well separated clusters in 8 dims.
    let centres = [[4.0f32, 0.0], [0.0, 4.0], [-4.0, -4.0]];
    let mut b = store.batch();
    let mut cluster_of = BTreeMap::new();
    for i in 0..90usize {
        let c = i % 3;
        let jitter = |k: usize| ((i * 31 + k * 17) % 11) as f32 / 50.0 - 0.1;
        let mut v = vec![centres[c][0] + jitter(0), centres[c][1] + jitter(1)];
        v.extend((2..8).map(jitter));
        let id = format!("item{i:03}");
        cluster_of.insert(id.clone(), c);
        b.put_item_embedding(&ItemEmbedding {
            item_id: id,
            model: "m".into(),
            model_version: "1".into(),
            item_version: 1,
            vector: v,
            semantic_ids: vec![],
            ts: T0,
        })
        .unwrap();
    }
    b.commit().unwrap();
    let mut config = sailstream::Config::default();
    config.jobs.output_dir = dir.path().join("exports");
    config.jobs.semantic_id_codebooks = vec![3, 4];
    let report = sailstream::jobs::semantic_ids::run(&store, &config).unwrap();
    assert_eq!((report.items, report.levels.clone()), (90, vec![3, 4]));
    assert!(report.residual_mse[1] <= report.residual_mse[0]);

    let books = store.codebooks().unwrap().unwrap();
    let mut first_level_of_cluster: BTreeMap<usize, u32> = BTreeMap::new();
    let mut codes_before = Vec::new();
    store
        .for_each_item_embedding(|e| {
            let (version, codes) = store.semantic_ids(&e.item_id).unwrap().unwrap();
            assert_eq!(version, "1");
            // Independent assignment: nearest centroid per level on the running residual.
            let mut r = e.vector.clone();
            for (level, code) in books.levels.iter().zip(&codes) {
                let d = |c: &Vec<f32>| r.iter().zip(c).map(|(x, y)| (x - y) * (x - y)).sum::<f32>();
                let best = (0..level.len())
                    .min_by(|&a, &b| d(&level[a]).total_cmp(&d(&level[b])))
                    .unwrap();
                assert_eq!(best as u32, *code, "{}", e.item_id);
                r.iter_mut().zip(&level[best]).for_each(|(x, y)| *x -= y);
            }
            // Level 1 is exactly the cluster.
            let c = cluster_of[&e.item_id];
            let code = *first_level_of_cluster.entry(c).or_insert(codes[0]);
            assert_eq!(code, codes[0], "{} in cluster {c}", e.item_id);
            codes_before.push(codes);
            Ok(true)
        })
        .unwrap();
    assert_eq!(
        first_level_of_cluster
            .values()
            .collect::<BTreeSet<_>>()
            .len(),
        3
    );
    // Same seed, same codes.
    sailstream::jobs::semantic_ids::run(&store, &config).unwrap();
    let mut codes_after = Vec::new();
    store
        .for_each_item_embedding(|e| {
            codes_after.push(store.semantic_ids(&e.item_id).unwrap().unwrap().1);
            Ok(true)
        })
        .unwrap();
    assert_eq!(codes_before, codes_after);
}

#[test]
fn user_interests_match_an_independent_computation() {
    use sailstream::schema::{Action, ItemEmbedding};
    use sailstream::store::{HistoryEntry, Store};

    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("store")).unwrap();
    // Two interest groups: "a" items near axis 0, "b" items near axis 1.
    let vecs: Vec<(&str, [f32; 4])> = vec![
        ("a1", [1.0, 0.1, 0.0, 0.0]),
        ("a2", [0.9, 0.0, 0.2, 0.0]),
        ("a3", [1.0, 0.0, 0.0, 0.3]),
        ("b1", [0.0, 1.0, 0.1, 0.0]),
        ("b2", [0.1, 0.8, 0.0, 0.0]),
    ];
    let mut b = store.batch();
    for (id, v) in &vecs {
        b.put_item_embedding(&ItemEmbedding {
            item_id: id.to_string(),
            model: "m".into(),
            model_version: "7".into(),
            item_version: 1,
            vector: v.to_vec(),
            semantic_ids: vec![],
            ts: T0,
        })
        .unwrap();
    }
    let pos = |item: &str, ts: i64| HistoryEntry {
        item_id: item.into(),
        action: Action::Like,
        ts,
        dwell_ms: 0,
        rating: None,
    };
    // Older "a" interests (a1 twice), newer "b" ones, and an item without an embedding (ignored).
    let history = vec![
        pos("a1", T0),
        pos("a2", T0 + DAY),
        pos("a3", T0 + 2 * DAY),
        pos("a1", T0 + 3 * DAY),
        pos("zz", T0 + 4 * DAY),
        pos("b1", T0 + 20 * DAY),
        pos("b2", T0 + 21 * DAY),
    ];
    b.put_user_lists("u1", &history, &history).unwrap();
    let u2 = [pos("zz", T0)];
    b.put_user_lists("u2", &u2, &u2).unwrap();
    b.commit().unwrap();

    let mut config = sailstream::Config::default();
    config.jobs.output_dir = dir.path().join("exports");
    config.jobs.interests_max_clusters = 2;
    config.jobs.interests_half_life_days = 7.0;
    let (users, written) = sailstream::jobs::interests::run(&store, &config).unwrap();
    assert_eq!((users, written), (2, 1));
    assert!(store.user_interests("u2").unwrap().is_none());
    let got = store.user_interests("u1").unwrap().unwrap();

    // Reference: weight 0.5^(age / 7 days) from the newest positive (b2), summed per item.
    let newest = T0 + 21 * DAY;
    let mut w: BTreeMap<&str, f64> = BTreeMap::new();
    for e in history.iter().filter(|e| e.item_id != "zz") {
        *w.entry(vecs.iter().find(|(id, _)| *id == e.item_id).unwrap().0)
            .or_default() += 0.5f64.powf((newest - e.ts) as f64 / (7.0 * DAY as f64));
    }
    let vec_of = |id: &str| vecs.iter().find(|(i, _)| *i == id).unwrap().1;
    let wmean = |ids: &[&str]| {
        let mut m = [0f64; 4];
        for id in ids {
            for (k, x) in vec_of(id).iter().enumerate() {
                m[k] += w[id] * f64::from(*x);
            }
        }
        let n = m.iter().map(|x| x * x).sum::<f64>().sqrt();
        m.map(|x| (x / n) as f32)
    };
    let close = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-5);
    assert!(
        close(&got.mean, &wmean(&["a1", "a2", "a3", "b1", "b2"])),
        "{:?}",
        got.mean
    );
    assert_eq!(
        (got.ts, got.positives_used, got.model_version.as_str()),
        (newest, 6, "7")
    );
    assert_eq!(got.clusters.len(), 2);
    let total: f64 = w.values().sum();
    // The recent "b" interest outweighs the older, larger "a" one.
    let (b_cluster, a_cluster) = (&got.clusters[0], &got.clusters[1]);
    assert_eq!((b_cluster.size, a_cluster.size), (2, 3));
    assert!(((w["b1"] + w["b2"]) / total - f64::from(b_cluster.weight)).abs() < 1e-5);
    assert!(close(&b_cluster.centroid, &wmean(&["b1", "b2"])));
    assert!(close(&a_cluster.centroid, &wmean(&["a1", "a2", "a3"])));
    let medoid = |ids: &[&str], c: &[f32]| {
        let cos = |v: [f32; 4]| {
            let d: f32 = v.iter().zip(c).map(|(x, y)| x * y).sum();
            d / v.iter().map(|x| x * x).sum::<f32>().sqrt()
        };
        ids.iter()
            .copied()
            .max_by(|a, b| cos(vec_of(a)).total_cmp(&cos(vec_of(b))))
            .unwrap()
            .to_string()
    };
    assert_eq!(
        a_cluster.medoid,
        medoid(&["a1", "a2", "a3"], &a_cluster.centroid)
    );
    assert_eq!(b_cluster.medoid, medoid(&["b1", "b2"], &b_cluster.centroid));
}

/// The seq2item fixture: user u1's positives in time order (a1..a3 strong: like + share + finish; a4..a7
/// one like each), then the target T; u2..u4 supply the behaviour overlap; items carry tags (content labels),
/// hand-chosen 2-d content vectors and 2-d `gid` ID vectors (a Parquet dump) in two obvious clusters.
fn seq2item_fixture(dir: &Path) {
    let item_tags: [(&str, &[&str]); 8] = [
        ("T", &["x"]),
        ("a1", &["w"]),
        ("a2", &["x"]),
        ("a3", &["y"]),
        ("a4", &["x", "z"]),
        ("a5", &["x"]),
        ("a6", &["y"]),
        ("a7", &["x"]),
    ];
    let items: Vec<String> = item_tags
        .iter()
        .map(|(id, tags)| {
            serde_json::json!({"item_id": id, "title": format!("item {id}"), "tags": tags,
                "created_at": T0, "version": 1})
            .to_string()
        })
        .collect();
    let mut evs = Vec::new();
    let mut ev = |user: &str, item: &str, action: &str, ts: i64| {
        evs.push(
            serde_json::json!({"user_id": user, "item_id": item, "action": action, "dwell_ms": 0,
                "ts": T0 + ts})
            .to_string(),
        )
    };
    for (k, item) in ["a1", "a2", "a3"].iter().enumerate() {
        let t = 1000 * (k as i64 + 1);
        ev("u1", item, "like", t);
        ev("u1", item, "share", t + 1);
        ev("u1", item, "finish", t + 2);
    }
    for (k, item) in ["a4", "a5", "a6", "a7", "T"].iter().enumerate() {
        ev("u1", item, "like", 4000 + 1000 * k as i64);
    }
    // Non-positive events do not count.
    ev("u1", "a5", "impression", 5001);
    ev("u2", "a1", "like", 1500);
    ev("u2", "a2", "like", 2500);
    ev("u2", "T", "like", 8500);
    ev("u3", "a1", "like", 1600);
    ev("u3", "T", "like", 8600);
    ev("u4", "a2", "like", 2600);
    ev("u4", "a3", "like", 3600);
    for (name, lines) in [("items", &items), ("behaviours", &evs)] {
        std::fs::write(dir.join(format!("{name}.jsonl")), lines.join("\n") + "\n").unwrap();
    }
    // The recommender's ID embeddings arrive as a Parquet dump (typed columns).
    use arrow::array::{ArrayRef, Float32Builder, Int64Array, ListBuilder, StringArray};
    let cluster_a = ["a1", "a2", "a3", "a4"];
    let mut vectors = ListBuilder::new(Float32Builder::new());
    for (id, _) in &item_tags {
        let v = if cluster_a.contains(id) {
            [1.0, 0.0]
        } else {
            [0.0, 1.0]
        };
        vectors.values().append_slice(&v);
        vectors.append(true);
    }
    let n = item_tags.len();
    let columns: Vec<(&str, ArrayRef)> = vec![
        (
            "item_id",
            std::sync::Arc::new(StringArray::from_iter_values(
                item_tags.iter().map(|(id, _)| *id),
            )),
        ),
        (
            "space",
            std::sync::Arc::new(StringArray::from(vec!["gid"; n])),
        ),
        ("vector", std::sync::Arc::new(vectors.finish())),
        ("version", std::sync::Arc::new(Int64Array::from(vec![1; n]))),
        ("ts", std::sync::Arc::new(Int64Array::from(vec![T0; n]))),
    ];
    let batch = arrow::array::RecordBatch::try_from_iter(columns).unwrap();
    let file = std::fs::File::create(dir.join("ids.parquet")).unwrap();
    let mut w = parquet::arrow::ArrowWriter::try_new(file, batch.schema(), None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
}

/// Content vectors of the seq2item fixture (cosine to T: a1 1, a2 0.6, a3 0, a4 1).
fn seq2item_vectors() -> BTreeMap<&'static str, [f32; 2]> {
    BTreeMap::from([
        ("T", [1.0, 0.0]),
        ("a1", [1.0, 0.0]),
        ("a2", [0.6, 0.8]),
        ("a3", [0.0, 1.0]),
        ("a4", [1.0, 0.0]),
        ("a5", [0.0, 1.0]),
        ("a6", [0.0, 1.0]),
        ("a7", [0.0, 1.0]),
    ])
}

fn seq2item_bin(dir: &Path) -> Command {
    let mut c = bin(dir);
    c.env("SAILSTREAM__ID_SPACES__GID", "2")
        .env("SAILSTREAM__JOBS__SEQ2ITEM_QUERY_LEN", "3")
        .env("SAILSTREAM__JOBS__SEQ2ITEM_MIN_QUERY", "1")
        .env("SAILSTREAM__JOBS__SEQ2ITEM_COLLAB_SPACE", "gid")
        .env("SAILSTREAM__JOBS__SEQ2ITEM_COLLAB_CLUSTERS", "2")
        .env("SAILSTREAM__JOBS__ID2ITEM_NEIGHBOURS", "1");
    c
}

/// (user, target, strategy) -> query, from the seq2item Parquet output.
fn read_samples(dir: &Path) -> BTreeMap<(String, String, String), Vec<String>> {
    let mut out = BTreeMap::new();
    for b in harness::read_parquet_dir(&dir.join("exports/seq2item"), true) {
        let col = |n: &str| harness::strings(&b, n);
        let (users, targets, strategies) = (col("user_id"), col("target_item"), col("strategy"));
        let queries = b
            .column_by_name("query_items")
            .unwrap()
            .as_list::<i32>()
            .clone();
        for r in 0..b.num_rows() {
            let q = queries.value(r);
            let q: Vec<String> = q
                .as_string::<i32>()
                .iter()
                .map(|s| s.unwrap().to_string())
                .collect();
            let key = (
                users.value(r).to_string(),
                targets.value(r).to_string(),
                strategies.value(r).to_string(),
            );
            assert!(
                out.insert(key, q).is_none(),
                "one sample per user, target and strategy"
            );
        }
    }
    out
}

#[test]
fn seq2item_strategies_and_id2item_match_hand_worked_fixture() {
    use sailstream::store::Store;

    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    seq2item_fixture(d);
    let file = |n: &str, topic: &str| format!("{}:{topic}", d.join(n).display());
    run(seq2item_bin(d).args([
        "replay",
        "--file",
        &file("items.jsonl", "sail.items"),
        "--file",
        &file("behaviours.jsonl", "sail.behaviours"),
        "--file",
        &file("ids.parquet", "sail.id_embeddings"),
    ]));
    {
        let store = Store::open(d.join("store")).unwrap();
        let mut b = store.batch();
        for (id, v) in seq2item_vectors() {
            b.put_item_embedding(&hand_embedding(id, &v)).unwrap();
        }
        // Left over from an earlier run: a5 is never a target here, and the space "old" is gone.
        for (item, kind) in [("a5", "seq2item"), ("a1", "id:old")] {
            let stale = sailstream::store::TeacherTarget {
                kind: kind.into(),
                source: "earlier run".into(),
                samples: 1,
                ts: T0,
                vector: vec![1.0, 0.0],
            };
            b.put_teacher_target(item, &stale).unwrap();
        }
        b.commit().unwrap();
    }
    let out = run(seq2item_bin(d).args(["job", "run", "id2item"]));
    assert!(out.contains("gid (8 items, sail.id_embeddings)"), "{out}");
    run(seq2item_bin(d).args(["job", "run", "seq2item"]));
    let samples = read_samples(d);
    let get = |u: &str, t: &str, s: &str| {
        samples
            .get(&(u.to_string(), t.to_string(), s.to_string()))
            .cloned()
    };
    let v = |ids: &[&str]| Some(ids.iter().map(|s| s.to_string()).collect::<Vec<_>>());

    // content_single_peak: strong candidates a1, a2, a3; cosine to T 1, 0.6, 0 (below 0.2) -> a1, a2.
    assert_eq!(get("u1", "T", "content_single_peak"), v(&["a1", "a2"]));
    // content_multi_peak, newest first: a7 {x} opens P1; a6 {y} P2; a5 {x} joins P1; a4 {x,z} has Jaccard
    // exactly 0.5 with P1 (not above) -> P3; a3 -> P2; a2 -> P1; a1 {w} P4. Sizes 3,2,1,1, 3 slots:
    // floors 1,0,0,0, remainders (x7) 2,6,3,3 -> P2 then P3 get the two left. Newest of each: a7, a6, a4.
    assert_eq!(get("u1", "T", "content_multi_peak"), v(&["a4", "a6", "a7"]));
    // collab_single_peak: positive users without u1: T {u2,u3}, a1 {u2,u3} (1), a2 {u2,u4} (1/3), a3 {u4} (0).
    assert_eq!(get("u1", "T", "collab_single_peak"), v(&["a1", "a2"]));
    // collab_multi_peak: positive events per gid cluster: A (a1-a4) 3+3+3+1 = 10, B (a5-a7) 3; 3 slots ->
    // floors 2, 0, remainders 4, 9 -> A 2, B 1.
    let q = get("u1", "T", "collab_multi_peak").unwrap();
    let in_a = q
        .iter()
        .filter(|i| ["a1", "a2", "a3", "a4"].contains(&i.as_str()))
        .count();
    let in_b = q
        .iter()
        .filter(|i| ["a5", "a6", "a7"].contains(&i.as_str()))
        .count();
    assert_eq!((q.len(), in_a, in_b), (3, 2, 1), "{q:?}");
    // The other users: no strong items, so only the multi-peak strategies, which take everything.
    for (u, t, q) in [
        ("u2", "T", &["a1", "a2"][..]),
        ("u3", "T", &["a1"]),
        ("u4", "a3", &["a2"]),
    ] {
        assert_eq!(get(u, t, "content_multi_peak"), v(q), "{u}");
        assert_eq!(get(u, t, "collab_multi_peak"), v(q), "{u}");
        assert_eq!(get(u, t, "content_single_peak"), None, "{u}");
        assert_eq!(get(u, t, "collab_single_peak"), None, "{u}");
    }
    assert_eq!(samples.len(), 10);

    // Teacher vector of T: the normalised mean of its 8 samples' normalised mean-pooled queries.
    let vecs = seq2item_vectors();
    let unit = |mut x: [f64; 2]| {
        let n = (x[0] * x[0] + x[1] * x[1]).sqrt();
        x.iter_mut().for_each(|c| *c /= n);
        x
    };
    let mut sum = [0f64; 2];
    let mut n = 0;
    for ((_, t, _), q) in &samples {
        if t == "T" {
            let mut m = [0f64; 2];
            for id in q {
                m[0] += f64::from(vecs[id.as_str()][0]);
                m[1] += f64::from(vecs[id.as_str()][1]);
            }
            let m = unit(m);
            sum[0] += m[0];
            sum[1] += m[1];
            n += 1;
        }
    }
    let expected = unit(sum);
    let store = Store::open_read_only(d.join("store")).unwrap();
    let got = store.teacher_target("T", "seq2item").unwrap().unwrap();
    assert_eq!((n, got.samples, got.source.as_str()), (8, 8, "1"));
    for k in 0..2 {
        assert!(
            (f64::from(got.vector[k]) - expected[k]).abs() < 1e-5,
            "{got:?} vs {expected:?}"
        );
    }
    // Reruns replace a job's targets: the leftovers are gone.
    assert!(store.teacher_target("a5", "seq2item").unwrap().is_none());
    assert!(store.teacher_target("a1", "id:old").unwrap().is_none());
    let kinds: Vec<String> = store
        .teacher_targets("a1")
        .unwrap()
        .into_iter()
        .map(|t| t.kind)
        .collect();
    assert_eq!(kinds, ["id:gid"]);
    // a3 is u4's target: one sample each of two strategies, both [a2].
    let a3 = store.teacher_target("a3", "seq2item").unwrap().unwrap();
    assert_eq!(a3.samples, 2);
    assert!((a3.vector[0] - 0.6).abs() < 1e-6 && (a3.vector[1] - 0.8).abs() < 1e-6);

    // id2item: the supplied gid vectors are the teacher targets, as given; each item's 1 nearest neighbour
    // is in its own cluster (cosine 1).
    let t = store.teacher_target("a6", "id:gid").unwrap().unwrap();
    assert_eq!(
        (t.vector.clone(), t.source.as_str()),
        (vec![0.0, 1.0], "sail.id_embeddings")
    );
    let mut neighbour_rows = 0;
    for b in harness::read_parquet_dir(&d.join("exports/id2item/i2i"), true) {
        let items = harness::strings(&b, "item_id");
        let nbrs = harness::strings(&b, "neighbour");
        let cos = harness::primitives::<arrow::datatypes::Float32Type>(&b, "cosine");
        for r in 0..b.num_rows() {
            let same = |x: &str| ["a1", "a2", "a3", "a4"].contains(&x);
            assert_eq!(same(items.value(r)), same(nbrs.value(r)));
            assert!((cos.value(r) - 1.0).abs() < 1e-6);
            neighbour_rows += 1;
        }
    }
    assert_eq!(neighbour_rows, 8);
    drop(store);

    // Reruns give the same samples (the seeded sampling included).
    run(seq2item_bin(d).args(["job", "run", "seq2item"]));
    assert_eq!(read_samples(d), samples);
}

#[test]
fn movielens_backfill_produces_every_output_and_resumes() {
    use sailstream::store::Store;

    let ml = sailstream::runtime::install_root().join("data/ml-100k");
    assert!(
        ml.join("behaviours.jsonl").exists(),
        "{} is missing: run scripts/setup.sh",
        ml.display()
    );
    // Independent reference: each user's positives (rating >= 4) and newest positive (ts, then item id).
    let mut positives: BTreeMap<String, BTreeMap<String, i64>> = BTreeMap::new();
    for line in std::fs::read_to_string(ml.join("behaviours.jsonl"))
        .unwrap()
        .lines()
    {
        let e: serde_json::Value = serde_json::from_str(line).unwrap();
        if e["rating"].as_f64().unwrap() >= 4.0 {
            let ts = e["ts"].as_i64().unwrap();
            let slot = positives
                .entry(e["user_id"].as_str().unwrap().to_string())
                .or_default()
                .entry(e["item_id"].as_str().unwrap().to_string())
                .or_insert(ts);
            *slot = (*slot).max(ts);
        }
    }
    let newest: BTreeMap<&String, (i64, &String)> = positives
        .iter()
        .map(|(u, items)| (u, items.iter().map(|(i, ts)| (*ts, i)).max().unwrap()))
        .collect();

    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let backfill = || {
        let mut c = bin(d);
        // MovieLens has one rating per user and item: "strong" items need a threshold of 1 here.
        c.env("SAILSTREAM__EMBED__ENABLED", "true")
            .env("SAILSTREAM__JOBS__SEQ2ITEM_STRONG_POSITIVES", "1")
            .args(["backfill", "--events"])
            .arg(&ml);
        run(&mut c)
    };
    let first = backfill();
    assert!(first.contains("replayed 101682 records"), "{first}");
    assert!(first.contains("embedded 1682 items"), "{first}");

    let samples = read_samples(d);
    let mut per_strategy: BTreeMap<&str, usize> = BTreeMap::new();
    for ((user, target, strategy), query) in &samples {
        *per_strategy.entry(strategy.as_str()).or_default() += 1;
        let (target_ts, expected) = newest[user];
        assert_eq!(
            target, expected,
            "{user}: the target is the newest positive"
        );
        assert!(
            query.len() >= 3 && query.len() <= 10,
            "{user} {strategy}: {query:?}"
        );
        for q in query {
            let ts = positives[user]
                .get(q)
                .unwrap_or_else(|| panic!("{user}: {q} is not a positive"));
            assert!(*ts < target_ts, "{user}: {q} is not before the target");
        }
    }
    assert_eq!(per_strategy.len(), 4, "{per_strategy:?}");
    assert!(per_strategy.values().all(|&n| n > 100), "{per_strategy:?}");

    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("exports/training/datasets.json")).unwrap())
            .unwrap();
    let datasets = manifest["datasets"].as_array().unwrap();
    assert_eq!(datasets.len(), 7);
    let total: f64 = datasets.iter().map(|x| x["weight"].as_f64().unwrap()).sum();
    assert!((total - 1.0).abs() < 1e-9);
    for x in datasets {
        let rows: usize = x["shards"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                let path = d.join("exports/training").join(s.as_str().unwrap());
                let file = std::fs::File::open(path).unwrap();
                parquet::file::reader::SerializedFileReader::new(file)
                    .map(|r| {
                        use parquet::file::reader::FileReader;
                        r.metadata().file_metadata().num_rows() as usize
                    })
                    .unwrap()
            })
            .sum();
        assert_eq!(rows as u64, x["rows"].as_u64().unwrap(), "{x}");
        assert!(rows > 0, "{x}");
    }
    // The held-out co-consumption pairs (10% by default) are not in the training export; eval uses them.
    let copairs_rows = harness::read_parquet_dir(&d.join("exports/copairs"), true)
        .iter()
        .map(|b| b.num_rows())
        .sum::<usize>() as f64;
    let trained = datasets.iter().find(|x| x["name"] == "copairs").unwrap()["rows"]
        .as_f64()
        .unwrap();
    let share = 1.0 - trained / copairs_rows;
    assert!(
        (0.08..0.12).contains(&share),
        "held out {share} of {copairs_rows}"
    );
    let seq_rows: u64 = datasets
        .iter()
        .filter(|x| x["name"].as_str().unwrap().starts_with("seq2item_"))
        .map(|x| x["rows"].as_u64().unwrap())
        .sum();
    assert_eq!(seq_rows as usize, samples.len());

    let store = Store::open_read_only(d.join("store")).unwrap();
    let (user, (_, target)) = newest.iter().next().unwrap();
    let t = store.teacher_target(target, "seq2item").unwrap().unwrap();
    assert!(t.samples >= 1 && (t.vector.iter().map(|x| x * x).sum::<f32>() - 1.0).abs() < 1e-4);
    assert!(
        store
            .teacher_target(target, "id:item2vec")
            .unwrap()
            .is_some()
    );
    assert_eq!(store.semantic_ids(target).unwrap().unwrap().1.len(), 3);
    let interests = store.user_interests(user).unwrap().unwrap();
    assert!(!interests.clusters.is_empty() && interests.clusters.len() <= 5);
    drop(store);
    // The same features as Parquet: codes, codebooks, interests, clusters and seq2item teacher vectors.
    let rows = |name: &str| -> usize {
        harness::read_parquet_dir(&d.join("exports").join(name), true)
            .iter()
            .map(|b| b.num_rows())
            .sum()
    };
    let targets: BTreeSet<&String> = samples.keys().map(|(_, t, _)| t).collect();
    assert_eq!(rows("semantic_ids"), 1682);
    assert_eq!(rows("semantic_id_codebooks"), 64 + 16 + 16);
    assert_eq!(rows("interests"), positives.len());
    assert!(rows("interest_clusters") >= positives.len());
    assert_eq!(rows("seq2item_teachers"), targets.len());

    // Same files again: every step is recorded as done and skipped.
    let second = backfill();
    assert_eq!(
        second.matches("done in an earlier run").count(),
        7,
        "{second}"
    );

    // The quality report over MovieLens: every metric present and well-formed (values are in BENCHMARKS.md).
    let out = bin(d).args(["eval", "--json", "-"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    eprintln!("MovieLens eval: {report}");
    assert_eq!(report["items"], 1682);
    for metric in ["copair_i2i", "seq2item_vanilla", "seq2item_filtered"] {
        let recall = report[metric]["recall"].as_object().unwrap();
        // JSON object keys are strings: order them as the numbers k they are.
        let by_k: BTreeMap<u64, f64> = recall
            .iter()
            .map(|(k, v)| (k.parse().unwrap(), v.as_f64().unwrap()))
            .collect();
        let values: Vec<f64> = by_k.values().copied().collect();
        assert!(
            values.windows(2).all(|w| w[0] <= w[1])
                && values.iter().all(|v| (0.0..=1.0).contains(v)),
            "{metric}: {recall:?}"
        );
    }
    assert!(report["gid_i2i"]["item2vec"]["queries"].as_u64().unwrap() > 0);
    let auc = report["separability"]["auc"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&auc));
}

/// `sailstream eval` on a fixture small enough to work out by hand: four items with known 2-d vectors and two
/// co-consumption pairs made by the real copairs job.
#[test]
fn eval_reports_hand_worked_recall_and_separability() {
    use sailstream::store::Store;

    let dir = tempfile::tempdir().unwrap();
    // u1, u2 like a and b; u3, u4 like a and c: pairs (a, b) and (a, c), each with support 2.
    let likes = [
        ("u1", "a"),
        ("u1", "b"),
        ("u2", "a"),
        ("u2", "b"),
        ("u3", "a"),
        ("u3", "c"),
        ("u4", "a"),
        ("u4", "c"),
    ];
    let lines: Vec<String> = likes
        .iter()
        .enumerate()
        .map(|(k, (u, i))| {
            serde_json::json!({"user_id": u, "item_id": i, "action": "like", "dwell_ms": 0, "ts": T0 + k as i64})
                .to_string()
        })
        .collect();
    let file = dir.path().join("behaviours.jsonl");
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();
    run(bin(dir.path()).args([
        "replay",
        "--file",
        &format!("{}:sail.behaviours", file.display()),
    ]));
    run(bin(dir.path()).args(["job", "run", "copairs"]));
    {
        let store = Store::open(dir.path().join("store")).unwrap();
        let mut batch = store.batch();
        for (id, v) in [
            ("a", [1.0, 0.0]),
            ("b", [0.9, 0.1]),
            ("c", [0.0, 1.0]),
            ("d", [-1.0, 0.0]),
        ] {
            batch.put_item_embedding(&hand_embedding(id, &v)).unwrap();
        }
        batch.commit().unwrap();
    }
    // Nothing held out: the four pairs worked out below are all there is to evaluate.
    let out = bin(dir.path())
        .env("SAILSTREAM__JOBS__COPAIRS_HOLDOUT_PERCENT", "0")
        .args(["eval", "--json", "-", "--compare"])
        .arg(dir.path().join("store"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let this = &report["this"];
    // Queries a->b and b->a rank their partner first; a->c ranks c second (b is nearer) and c->a ranks a
    // second (cos(c, b) = 0.11 > cos(c, a) = 0): Recall@1 = 2/4, Recall@10 = 4/4.
    let copair = &this["copair_i2i"];
    assert_eq!(copair["queries"], 4);
    assert_eq!(copair["recall"]["1"], 0.5);
    assert_eq!(copair["recall"]["10"], 1.0);
    // Positive cosines: cos(a, b) = 0.9 / sqrt(0.82) twice, cos(a, c) = 0 twice.
    let pos = this["separability"]["positive_mean"].as_f64().unwrap();
    assert!((pos - 0.9 / 0.82f64.sqrt() / 2.0).abs() < 1e-6, "{pos}");
    // No histories of 11 items, no seq2item samples, no ID space: those metrics are absent, not zero.
    assert!(this["seq2item_vanilla"].is_null() && this["seq2item_filtered"].is_null());
    // Against itself: the same rankings.
    assert_eq!(this["compare"]["kendall_tau"], 1.0);
    assert_eq!(this["compare"]["top10_overlap"], 1.0);
    assert_eq!(report["other"]["copair_i2i"], report["this"]["copair_i2i"]);
    assert!(this["copair_pairs"].as_str().unwrap().starts_with("all"));
}
