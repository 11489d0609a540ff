//! Lookup API latency and throughput, with a load generator on loopback, in one run:
//!
//! - single item embedding (`GET /v1/items/{id}/embedding`, 896 floats) and match features
//!   (`POST /v1/match`, 1 user x 200 candidates);
//! - closed loop at several concurrencies (each connection sends its next request when the last is answered):
//!   QPS, p50, p99;
//! - open loop at a fixed 1,000 requests/s (latency counted from the scheduled send time, so a slow answer
//!   also delays the ones queued behind it: no coordinated omission);
//! - the floor: a Redis GET of the same response bytes on loopback, same client loop, when `redis-server` is
//!   installed (scripts/setup.sh installs it).
//!
//! The server is the real `sailstream serve` process following a store (RocksDB secondary instance), filled
//! with synthetic data shaped like production: BENCH_SERVE_ITEMS items (default 20,000) with 896-d vectors,
//! semantic IDs, seq2item and item2vec teacher vectors; BENCH_SERVE_USERS users (default 10,000) with 100
//! positives and 5 interest clusters each. Client and server share this machine's cores.
//! BENCH_SERVE_ONLY=match (or single) runs one workload only; =features only the in-process feature arithmetic.
//! Run: `cargo bench --bench serve`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sailstream::schema::{Action, ItemEmbedding};
use sailstream::serve::client::Client;
use sailstream::store::{
    Codebooks, HistoryEntry, InterestCluster, ModelInfo, Store, TeacherTarget, UserInterests,
};

const DIM: usize = 896;
/// The version of the model every stored vector (items and users) belongs to.
const MODEL_VERSION: &str = "0.1.0";
const CANDIDATES: usize = 200;
const T0: i64 = 1_764_000_000_000;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn unit(&mut self, dim: usize) -> Vec<f32> {
        let v: Vec<f32> = (0..dim)
            .map(|_| (self.next() % 20_000) as f32 / 10_000.0 - 1.0)
            .collect();
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.into_iter().map(|x| x / norm).collect()
    }
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn item_id(i: usize) -> String {
    format!("item{i:07}")
}

fn user_id(u: usize) -> String {
    format!("user{u:07}")
}

fn fill_store(path: &Path, items: usize, users: usize) {
    let store = Store::open(path).unwrap();
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let model = ModelInfo {
        name: "sail-lite".into(),
        version: MODEL_VERSION.into(),
        dim: DIM,
        matryoshka_prefixes: vec![384, DIM],
        normalized: true,
    };
    let mut batch = store.batch();
    batch.put_model_info(&model).unwrap();
    batch
        .put_codebooks(&Codebooks {
            model: model.name.clone(),
            model_version: model.version.clone(),
            levels: [64usize, 16, 16]
                .iter()
                .map(|&k| (0..k).map(|_| rng.unit(DIM)).collect())
                .collect(),
        })
        .unwrap();
    batch.commit().unwrap();
    for chunk in (0..items).collect::<Vec<_>>().chunks(1000) {
        let mut batch = store.batch();
        for &i in chunk {
            let id = item_id(i);
            batch
                .put_item_embedding(&ItemEmbedding {
                    item_id: id.clone(),
                    model: model.name.clone(),
                    model_version: model.version.clone(),
                    item_version: 1,
                    vector: rng.unit(DIM),
                    semantic_ids: vec![],
                    ts: T0,
                })
                .unwrap();
            let codes = [
                rng.below(64) as u32,
                rng.below(16) as u32,
                rng.below(16) as u32,
            ];
            batch.put_semantic_ids(&id, &model.version, &codes).unwrap();
            if i % 2 == 0 {
                batch
                    .put_teacher_target(
                        &id,
                        &TeacherTarget {
                            kind: "seq2item".into(),
                            source: "bench".into(),
                            samples: 4,
                            ts: T0,
                            vector: rng.unit(DIM),
                        },
                    )
                    .unwrap();
            }
            batch
                .put_teacher_target(
                    &id,
                    &TeacherTarget {
                        kind: "id:item2vec".into(),
                        source: "bench".into(),
                        samples: 1,
                        ts: T0,
                        vector: rng.unit(64),
                    },
                )
                .unwrap();
        }
        batch.commit().unwrap();
    }
    for chunk in (0..users).collect::<Vec<_>>().chunks(500) {
        let mut batch = store.batch();
        for &u in chunk {
            let id = user_id(u);
            let positives: Vec<HistoryEntry> = (0..100)
                .map(|k| HistoryEntry {
                    item_id: item_id(rng.below(items)),
                    action: Action::Like,
                    ts: T0 + k * 60_000,
                    dwell_ms: 0,
                    rating: None,
                })
                .collect();
            batch.put_user_lists(&id, &positives, &positives).unwrap();
            let medoids: Vec<&str> = positives[..5].iter().map(|p| p.item_id.as_str()).collect();
            batch
                .put_user_interests(&id, &random_interests(&mut rng, &medoids))
                .unwrap();
        }
        batch.commit().unwrap();
    }
    // As in a worker's store after a while: the data in table files, not in the write-ahead log and memtables.
    store.flush().unwrap();
}

/// A user's interests as the interests job stores them: a mean and one equal-weight cluster per medoid.
fn random_interests(rng: &mut Rng, medoids: &[&str]) -> UserInterests {
    UserInterests {
        model_version: MODEL_VERSION.into(),
        ts: T0 + 99 * 60_000,
        positives_used: 100,
        mean: rng.unit(DIM),
        clusters: medoids
            .iter()
            .map(|medoid| InterestCluster {
                centroid: rng.unit(DIM),
                medoid: medoid.to_string(),
                weight: 1.0 / medoids.len() as f32,
                size: 20,
            })
            .collect(),
    }
}

/// Commits to the live store (as the primary, beside the server's secondary) until `stop`: every 10 ms one batch
/// that rewrites a random user's interests (~24 KB, as the interests job does), so each catch-up of the server
/// has ~100 batches to apply. Returns the batches committed.
fn write_continuously(path: &Path, users: usize, stop: &std::sync::atomic::AtomicBool) -> usize {
    let store = Store::open(path).unwrap();
    let mut rng = Rng(0x5151_7a7a_0b0b_c3c3);
    let mut batches = 0;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let mut batch = store.batch();
        let id = user_id(rng.below(users));
        let medoid = item_id(0);
        batch
            .put_user_interests(&id, &random_interests(&mut rng, &[medoid.as_str(); 5]))
            .unwrap();
        batch.commit().unwrap();
        batches += 1;
        std::thread::sleep(Duration::from_millis(10));
    }
    batches
}

/// One request of a workload, ready to send.
#[derive(Clone)]
enum Request {
    Get(String),
    Post(String, String),
}

trait Target: Send {
    fn send(&mut self, r: &Request);
}

impl Target for Client {
    fn send(&mut self, r: &Request) {
        let reply = match r {
            Request::Get(path) => self.get(path),
            Request::Post(path, body) => self.post_json(path, body),
        }
        .expect("lookup request");
        assert_eq!(reply.status, 200, "{}", reply.text());
    }
}

/// A Redis connection that GETs the key named by the request's path.
struct Redis(BufReader<TcpStream>);

impl Target for Redis {
    fn send(&mut self, r: &Request) {
        let key = match r {
            Request::Get(k) | Request::Post(k, _) => k,
        };
        let stream = self.0.get_mut();
        write!(stream, "*2\r\n$3\r\nGET\r\n${}\r\n{key}\r\n", key.len()).unwrap();
        let mut line = String::new();
        self.0.read_line(&mut line).unwrap();
        let n: usize = line[1..].trim().parse().expect("bulk string");
        let mut value = vec![0; n + 2];
        self.0.read_exact(&mut value).unwrap();
    }
}

struct Stats {
    requests: usize,
    qps: f64,
    p50_ms: f64,
    p99_ms: f64,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

/// `connections` clients; closed loop when `rate` is None, else an open loop at `rate` requests/s in total.
fn load(
    connect: &(dyn Fn() -> Box<dyn Target> + Sync),
    requests: &Arc<Vec<Request>>,
    connections: usize,
    rate: Option<f64>,
    duration: Duration,
) -> Stats {
    let started = Instant::now() + Duration::from_millis(50);
    let mut latencies: Vec<f64> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..connections)
            .map(|t| {
                let requests = requests.clone();
                let mut target = connect();
                scope.spawn(move || {
                    let mut out = Vec::new();
                    // Warm the connection outside the measurement.
                    target.send(&requests[t % requests.len()]);
                    let mut k = 0usize;
                    loop {
                        let scheduled = match rate {
                            None => Instant::now().max(started),
                            Some(rate) => {
                                let slot = (k * connections + t) as f64 / rate;
                                started + Duration::from_secs_f64(slot)
                            }
                        };
                        if scheduled >= started + duration {
                            break;
                        }
                        if let Some(wait) = scheduled.checked_duration_since(Instant::now()) {
                            std::thread::sleep(wait);
                        }
                        target.send(&requests[(k * connections + t) % requests.len()]);
                        out.push(scheduled.elapsed().as_secs_f64() * 1000.0);
                        k += 1;
                    }
                    out
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let elapsed = started.elapsed().as_secs_f64().max(duration.as_secs_f64());
    latencies.sort_by(f64::total_cmp);
    Stats {
        requests: latencies.len(),
        qps: latencies.len() as f64 / elapsed,
        p50_ms: percentile(&latencies, 0.5),
        p99_ms: percentile(&latencies, 0.99),
    }
}

struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn wait_for(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "nothing listening on {addr}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// CPU seconds (user + system) a process has used so far, from /proc (Linux; 0 elsewhere).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name: state is the 1st, utime the 12th, stime the 13th.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // USER_HZ is 100 on Linux.
    (ticks(11) + ticks(12)) / 100.0
}

fn start_server(state: &Path) -> (Process, SocketAddr) {
    let addr = free_addr();
    let child = Command::new(env!("CARGO_BIN_EXE_sailstream"))
        .arg("serve")
        .env("SAILSTREAM__STORE__PATH", state.join("store"))
        .env("SAILSTREAM__SERVE__LISTEN", addr.to_string())
        .env("SAILSTREAM__LOG__LEVEL", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let process = Process(child);
    wait_for(addr);
    let mut client = Client::new(addr);
    while client.get("/readyz").map(|r| r.status).ok() != Some(200) {
        std::thread::sleep(Duration::from_millis(50));
    }
    (process, addr)
}

/// redis-server on a free port with the two response bodies stored, if Redis is installed.
fn start_redis(single: &[u8], matched: &[u8]) -> Option<(Process, SocketAddr)> {
    let addr = free_addr();
    let child = Command::new("redis-server")
        .args([
            "--port",
            &addr.port().to_string(),
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .spawn()
        .ok()?;
    let process = Process(child);
    wait_for(addr);
    let mut conn = TcpStream::connect(addr).unwrap();
    for (key, value) in [("single", single), ("match", matched)] {
        let mut cmd = format!(
            "*3\r\n$3\r\nSET\r\n${}\r\n{key}\r\n${}\r\n",
            key.len(),
            value.len()
        )
        .into_bytes();
        cmd.extend_from_slice(value);
        cmd.extend_from_slice(b"\r\n");
        conn.write_all(&cmd).unwrap();
        let mut ok = [0u8; 5];
        conn.read_exact(&mut ok).unwrap();
        assert_eq!(&ok, b"+OK\r\n");
    }
    Some((process, addr))
}

/// The feature arithmetic alone, in this process (no HTTP, no store): one user with an interest mean, 5
/// clusters and 50 recent positives against 200 candidates, shaped like the store the server reads. Returns
/// microseconds per request and the multiply-adds of its cosine matrix per second (the floor is the CPU's FMA
/// throughput).
fn features_alone(rounds: usize) -> (f64, f64) {
    use sailstream::serve::features::{MatchItem, UserSide, match_features};
    let mut rng = Rng(0x1234_5678_9abc_def1);
    let item = |rng: &mut Rng| {
        let codes = vec![
            rng.below(256) as u32,
            rng.below(256) as u32,
            rng.below(256) as u32,
        ];
        Arc::new(
            MatchItem::new(&rng.unit(DIM))
                .with_semantic_ids(Some(codes))
                .with_seq2item_teacher(&rng.unit(DIM))
                .with_id_vector("item2vec", &rng.unit(64)),
        )
    };
    let user = UserSide {
        interest_mean: Some(rng.unit(DIM)),
        clusters: (0..5).map(|_| (rng.unit(DIM), 0.2)).collect(),
        recent: (0..50).map(|_| item(&mut rng)).collect(),
        query_len: 10,
    };
    let candidates: Vec<Option<Arc<MatchItem>>> =
        (0..CANDIDATES).map(|_| Some(item(&mut rng))).collect();
    let started = Instant::now();
    for _ in 0..rounds {
        std::hint::black_box(match_features(&user, &candidates, 3, 0.5));
    }
    let seconds = started.elapsed().as_secs_f64() / rounds as f64;
    let fmas = (CANDIDATES * 56 * DIM) as f64;
    (seconds * 1e6, fmas / seconds / 1e9)
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    if !full {
        println!(
            "smoke run of the serving benchmark (use `cargo bench --bench serve` for numbers)"
        );
    }
    if std::env::var("BENCH_SERVE_ONLY").as_deref() == Ok("features") {
        let (micros, gfma) = features_alone(if full { 2_000 } else { 20 });
        println!(
            "match features arithmetic alone: {micros:.0} us per request, {gfma:.1} G multiply-adds/s"
        );
        return;
    }
    let items = env_usize("BENCH_SERVE_ITEMS", if full { 20_000 } else { 500 });
    let users = env_usize("BENCH_SERVE_USERS", if full { 10_000 } else { 100 });
    let duration = Duration::from_millis(if full { 5_000 } else { 300 });
    let state = tempfile::tempdir().unwrap();
    let filling = Instant::now();
    fill_store(&state.path().join("store"), items, users);
    println!(
        "store: {items} items, {users} users, filled in {:.1}s",
        filling.elapsed().as_secs_f64()
    );
    let (server, addr) = start_server(state.path());
    let server_pid = server.0.id();

    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let single: Arc<Vec<Request>> = Arc::new(
        (0..1024)
            .map(|_| Request::Get(format!("/v1/items/{}/embedding", item_id(rng.below(items)))))
            .collect(),
    );
    let matches: Arc<Vec<Request>> = Arc::new(
        (0..256)
            .map(|_| {
                let candidates: Vec<String> =
                    (0..CANDIDATES).map(|_| item_id(rng.below(items))).collect();
                let body = serde_json::json!({
                    "user_id": user_id(rng.below(users)),
                    "candidates": candidates,
                });
                Request::Post("/v1/match".into(), body.to_string())
            })
            .collect(),
    );
    // The same bytes the server answers, for the Redis floor.
    let mut probe = Client::new(addr);
    let single_body = match &single[0] {
        Request::Get(p) => probe.get(p).unwrap().body,
        Request::Post(..) => unreachable!(),
    };
    let match_body = match &matches[0] {
        Request::Post(p, b) => probe.post_json(p, b).unwrap().body,
        Request::Get(_) => unreachable!(),
    };
    println!(
        "response sizes: single embedding {} bytes, match features (200 candidates) {} bytes",
        single_body.len(),
        match_body.len()
    );
    let redis = start_redis(&single_body, &match_body);
    if redis.is_none() {
        println!(
            "redis-server not found: no Redis floor in this run (scripts/setup.sh installs it)"
        );
    }

    let server_conn = move || Box::new(Client::new(addr)) as Box<dyn Target>;
    let redis_addr = redis.as_ref().map(|(_, a)| *a);
    let redis_conn = move || {
        let stream = TcpStream::connect(redis_addr.expect("redis running")).unwrap();
        stream.set_nodelay(true).unwrap();
        Box::new(Redis(BufReader::new(stream))) as Box<dyn Target>
    };
    let redis_single: Arc<Vec<Request>> = Arc::new(vec![Request::Get("single".into())]);
    let redis_match: Arc<Vec<Request>> = Arc::new(vec![Request::Get("match".into())]);

    println!(
        "\n| workload | load | sailstream QPS | p50 ms | p99 ms | server CPU ms/request | Redis GET p50 ms | p99 ms | p99 ratio |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|");
    let workloads = [
        ("single embedding", &single, &redis_single),
        ("match 1x200", &matches, &redis_match),
    ];
    // BENCH_SERVE_ONLY=match (or =single) runs one workload, e.g. to profile the server on it.
    let only = std::env::var("BENCH_SERVE_ONLY").unwrap_or_default();
    for (name, requests, redis_requests) in workloads {
        if !only.is_empty() && !name.starts_with(only.as_str()) {
            continue;
        }
        if name.starts_with("match") {
            // Each request once, before any other match request: every item is read from the store and
            // decoded (the server's item cache is cold), as after a restart or a re-embed of the catalogue.
            let mut client = Client::new(addr);
            let cpu = cpu_seconds(server_pid);
            let started = Instant::now();
            let mut latencies: Vec<f64> = requests
                .iter()
                .map(|r| {
                    let t = Instant::now();
                    client.send(r);
                    t.elapsed().as_secs_f64() * 1000.0
                })
                .collect();
            let elapsed = started.elapsed().as_secs_f64();
            latencies.sort_by(f64::total_cmp);
            println!(
                "| {name} | closed, 1 conn, item cache empty at the start ({} requests, each once) | {:.0} | {:.3} | {:.3} | {:.3} | - | - | - |",
                latencies.len(),
                latencies.len() as f64 / elapsed,
                percentile(&latencies, 0.5),
                percentile(&latencies, 0.99),
                (cpu_seconds(server_pid) - cpu) * 1000.0 / latencies.len() as f64
            );
        }
        let loads: Vec<(&str, usize, Option<f64>, bool)> = vec![
            ("closed, 1 conn", 1, None, false),
            ("closed, 4 conns", 4, None, false),
            ("closed, 16 conns", 16, None, false),
            ("open, 1000 req/s, 8 conns", 8, Some(1000.0), false),
            (
                "open, 1000 req/s, 8 conns, a writer committing beside it",
                8,
                Some(1000.0),
                true,
            ),
        ];
        for (label, connections, rate, with_writer) in loads {
            let stop = std::sync::atomic::AtomicBool::new(false);
            let store_path = state.path().join("store");
            let (ours, cpu_ms, floor, batches) = std::thread::scope(|scope| {
                let writer = with_writer
                    .then(|| scope.spawn(|| write_continuously(&store_path, users, &stop)));
                let cpu = cpu_seconds(server_pid);
                let ours = load(&server_conn, requests, connections, rate, duration);
                let cpu_ms = (cpu_seconds(server_pid) - cpu) * 1000.0 / ours.requests as f64;
                let floor = redis
                    .is_some()
                    .then(|| load(&redis_conn, redis_requests, connections, rate, duration));
                stop.store(true, std::sync::atomic::Ordering::Relaxed);
                let batches = writer.map(|w| w.join().unwrap());
                (ours, cpu_ms, floor, batches)
            });
            let (rp50, rp99, ratio) = match &floor {
                Some(f) => (
                    format!("{:.3}", f.p50_ms),
                    format!("{:.3}", f.p99_ms),
                    format!("{:.1}x", ours.p99_ms / f.p99_ms),
                ),
                None => ("-".into(), "-".into(), "-".into()),
            };
            let label = match batches {
                Some(n) => format!("{label} ({n} batches over both loops)"),
                None => label.to_string(),
            };
            println!(
                "| {name} | {label} | {:.0} | {:.3} | {:.3} | {cpu_ms:.3} | {rp50} | {rp99} | {ratio} |",
                ours.qps, ours.p50_ms, ours.p99_ms
            );
        }
    }
    let (micros, gfma) = features_alone(if full { 2_000 } else { 20 });
    println!(
        "\nmatch features arithmetic alone (in process, 1 user x 200 candidates, 56 user rows): {micros:.0} us per \
         request; its cosine matrix runs at {gfma:.1} G multiply-adds/s"
    );
    // How often match features found their items decoded in the server's item cache (serve.item_cache_mb;
    // run with SAILSTREAM__SERVE__ITEM_CACHE_MB=0 for the server without it).
    let metrics = probe.get("/metrics").map(|r| r.text()).unwrap_or_default();
    let cache: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("sailstream_serve_item_cache_total{"))
        .collect();
    println!("\nitem cache: {}", cache.join(", "));
    println!(
        "\nGoals: match features p99 <= 2 ms at 1k QPS, single embedding p99 <= 0.5 ms. Published Feast numbers \
         (not measured here): < 1.5 ms p99 with Redis, 3.9 ms p99 for the Go feature server."
    );
}
