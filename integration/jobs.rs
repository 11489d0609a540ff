//! DataFusion jobs over the offline log written by the real ingest path, checked against independent
//! computations in the test.

mod harness;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use arrow::array::AsArray;

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
    let mut c = Command::new(env!("CARGO_BIN_EXE_sailstream"));
    for (k, _) in std::env::vars() {
        if k.starts_with("SAILSTREAM") {
            c.env_remove(k);
        }
    }
    c.env("SAILSTREAM__STORE__PATH", dir.join("store"))
        .env("SAILSTREAM__OFFLINE_LOG__PATH", dir.join("log"))
        .env("SAILSTREAM__JOBS__OUTPUT_DIR", dir.join("exports"))
        .env("SAILSTREAM__EMBED__ENABLED", "false")
        .env("SAILSTREAM__METRICS__ENABLED", "false");
    c
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
    assert!(stderr.contains("job copairs wrote"), "{stderr}");

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
        let a = batch
            .column_by_name("item_a")
            .unwrap()
            .as_string::<i32>()
            .clone();
        let b = batch
            .column_by_name("item_b")
            .unwrap()
            .as_string::<i32>()
            .clone();
        let users = batch
            .column_by_name("users")
            .unwrap()
            .as_primitive::<arrow::datatypes::Int64Type>()
            .clone();
        let co = batch
            .column_by_name("co_events")
            .unwrap()
            .as_primitive::<arrow::datatypes::Int64Type>()
            .clone();
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
    use sailstream::schema::ItemEmbedding;
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
    b.put_user_positives("u1", &history).unwrap();
    b.put_user_positives("u2", &[pos("zz", T0)]).unwrap();
    b.commit().unwrap();

    let mut config = sailstream::Config::default();
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
