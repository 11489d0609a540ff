//! The embed stage with the real sail-lite ONNX model and the real ONNX Runtime: parity with the Python
//! reference the build script computed, cross-modal retrieval on real photos, broken media, manifest checks,
//! and the store-driven stage (pending versions, model upgrades).

mod harness;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use sailstream::config::Config;
use sailstream::embed::stage::EmbedStage;
use sailstream::embed::{Embedded, Embedder, cosine, model_dir};
use sailstream::schema::Item;
use sailstream::store::Store;
use sailstream::{Error, Result};

fn default_model() -> PathBuf {
    let dir = model_dir(&Config::default());
    assert!(
        dir.join(".complete").exists(),
        "the sail-lite model is not built at {}: run scripts/setup.sh",
        dir.display()
    );
    dir
}

/// The model is ~130 MB: load it once per test binary.
fn shared_embedder() -> &'static Mutex<Embedder> {
    static E: OnceLock<Mutex<Embedder>> = OnceLock::new();
    E.get_or_init(|| Mutex::new(Embedder::load_from(&default_model(), &Config::default()).unwrap()))
}

fn fixtures() -> (Vec<Item>, HashMap<String, serde_json::Value>) {
    let dir = default_model().join("fixtures");
    let items = std::fs::read_to_string(dir.join("items.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let reference = std::fs::read_to_string(dir.join("reference.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v["item_id"].as_str().unwrap().to_string(), v)
        })
        .collect();
    (items, reference)
}

fn embed_all(items: &[Item]) -> Vec<Embedded> {
    shared_embedder()
        .lock()
        .unwrap()
        .embed(items)
        .unwrap()
        .into_iter()
        .map(|r| r.unwrap())
        .collect()
}

#[test]
fn rust_preprocessing_matches_the_python_reference() {
    let (items, reference) = fixtures();
    // All fixtures in one call: texts of different lengths share padded batches, frames and audio blocks of
    // several items are stacked; the reference ran each item alone.
    let out = embed_all(&items);
    let mut worst = (1.0f32, String::new());
    for (item, got) in items.iter().zip(&out) {
        let want = &reference[&item.item_id];
        assert_eq!(
            got.template.as_deref(),
            want["template"].as_str(),
            "{}: template",
            item.item_id
        );
        let text = shared_embedder().lock().unwrap().manifest().text.clone();
        assert_eq!(
            sailstream::embed::text::render(&text, item).map(|(_, t)| t),
            want["text"].as_str().map(str::to_string),
            "{}: rendered text",
            item.item_id
        );
        assert_eq!(
            got.frames as u64,
            want["frames"].as_u64().unwrap(),
            "{}: frames",
            item.item_id
        );
        assert_eq!(
            got.audio_blocks as u64,
            want["audio_blocks"].as_u64().unwrap(),
            "{}: audio blocks",
            item.item_id
        );
        let reference: Vec<f32> = want["embedding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        let c = cosine(&got.vector, &reference);
        if c < worst.0 {
            worst = (c, item.item_id.clone());
        }
        assert!(
            c >= 0.99,
            "{}: cosine {c} with the Python reference",
            item.item_id
        );
        let norm: f32 = got.vector.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "{}: norm {norm}", item.item_id);
    }
    eprintln!(
        "parity: {} fixtures, lowest cosine {:.5} ({})",
        items.len(),
        worst.0,
        worst.1
    );
}

#[test]
fn batching_does_not_change_vectors() {
    let (items, _) = fixtures();
    let together = embed_all(&items);
    for (item, batched) in items.iter().zip(&together).take(9) {
        let alone = embed_all(std::slice::from_ref(item));
        let c = cosine(&alone[0].vector, &batched.vector);
        assert!(c > 0.9999, "{}: alone vs batched cosine {c}", item.item_id);
    }
}

#[test]
fn photos_land_near_their_captions() {
    let (items, _) = fixtures();
    let out = embed_all(&items);
    let by_id: HashMap<&str, &[f32]> = out
        .iter()
        .map(|e| (e.item_id.as_str(), &e.vector[..384]))
        .collect();
    let captions: Vec<(&str, &[f32])> = by_id
        .iter()
        .filter(|(id, _)| id.starts_with("fx-caption-"))
        .map(|(id, v)| (*id, *v))
        .collect();
    let truth = [
        ("chelsea", "a-cat"),
        ("coffee", "a-cup-of-coffee"),
        ("rocket", "a-rocket"),
        ("astronaut", "an-astronaut"),
        ("horse", "a-horse"),
        ("clock_motion", "a-clock"),
    ];
    let mut hits = 0;
    for (photo, caption) in truth {
        let v = by_id[format!("fx-photo-{photo}").as_str()];
        let (best, score) = captions
            .iter()
            .map(|(id, c)| (*id, cosine(v, c)))
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .unwrap();
        eprintln!("{photo:>13} -> {best} ({score:.3})");
        if best == format!("fx-caption-{caption}") {
            hits += 1;
        }
        if photo == "chelsea" {
            assert_eq!(
                best, "fx-caption-a-cat",
                "the cat photo must be nearest to \"a cat\""
            );
        }
    }
    // The label bridge is rough (the astronaut photo has no ImageNet class); most photos still find their caption.
    assert!(
        hits >= 5,
        "only {hits} of 6 photos nearest to their caption"
    );
}

/// Serves one file over HTTP on loopback, for the http:// media path.
fn serve_once(body: Vec<u8>) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        if let Ok((mut s, _)) = listener.accept() {
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = s.write_all(&body);
        }
    });
    format!("http://{addr}/cat.png")
}

fn item(json: serde_json::Value) -> Item {
    let mut v = json;
    v["created_at"] = 1_700_000_000_000i64.into();
    v["version"] = v.get("version").cloned().unwrap_or(1.into());
    serde_json::from_value(v).unwrap()
}

#[test]
fn broken_or_unreachable_media_is_left_out_and_counted() {
    let fx = default_model().join("fixtures");
    let uri = |name: &str| format!("file://{}", fx.join(name).display());
    let cat = std::fs::read(fx.join("chelsea.png")).unwrap();
    let closed_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let items = vec![
        item(
            serde_json::json!({"item_id": "broken", "title": "clock repair",
            "cover": {"uri": uri("broken.jpg")}, "audio": {"uri": uri("broken.wav")}}),
        ),
        item(serde_json::json!({"item_id": "only-broken", "cover": {"uri": uri("broken.jpg")}})),
        item(serde_json::json!({"item_id": "missing-file", "title": "x",
            "cover": {"uri": "file:///nonexistent/picture.png"}})),
        item(serde_json::json!({"item_id": "unreachable", "title": "y",
            "cover": {"uri": format!("http://127.0.0.1:{closed_port}/a.png")}})),
        item(
            serde_json::json!({"item_id": "over-http", "cover": {"uri": serve_once(cat.clone())}}),
        ),
        item(serde_json::json!({"item_id": "inline", "cover": {"base64":
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &cat)}})),
    ];
    let out = shared_embedder().lock().unwrap().embed(&items).unwrap();
    let get = |i: usize| out[i].as_ref().unwrap();
    assert_eq!(
        get(0).dropped,
        vec![("image", "undecodable"), ("audio", "undecodable")]
    );
    assert_eq!(get(0).frames, 0);
    match &out[1] {
        Err(Error::NotEmbeddable { item_id, problem }) => {
            assert_eq!(item_id, "only-broken");
            assert!(problem.contains("image: undecodable"), "{problem}");
        }
        other => panic!("expected NotEmbeddable, got {other:?}"),
    }
    assert_eq!(get(2).dropped, vec![("image", "unreadable")]);
    assert_eq!(get(3).dropped, vec![("image", "unreadable")]);
    // The same picture over HTTP and inline gives the same vector.
    assert_eq!(get(4).frames, 1);
    assert!(cosine(&get(4).vector, &get(5).vector) > 0.99999);
}

#[test]
fn oversized_media_is_refused_before_decoding() {
    let dir = tempfile::tempdir().unwrap();
    let model = harness::edited_model(dir.path(), |m| {
        m.replace("max_bytes = 10485760", "max_bytes = 1000")
    });
    let mut e = Embedder::load_from(&model, &Config::default()).unwrap();
    let fx = default_model().join("fixtures");
    let it = item(serde_json::json!({"item_id": "big", "title": "big picture",
        "cover": {"uri": format!("file://{}", fx.join("chelsea.png").display())}}));
    let out = e.embed(&[it]).unwrap();
    assert_eq!(
        out[0].as_ref().unwrap().dropped,
        vec![("image", "too_large")]
    );
}

fn load_err(edit: impl Fn(&str) -> String) -> String {
    let dir = tempfile::tempdir().unwrap();
    let model = harness::edited_model(dir.path(), edit);
    match Embedder::load_from(&model, &Config::default()) {
        Ok(_) => panic!("the edited manifest was accepted"),
        Err(e) => {
            assert!(matches!(e, Error::Manifest { .. }), "{e}");
            e.to_string()
        }
    }
}

#[test]
fn a_manifest_that_does_not_match_the_graph_is_refused() {
    let e = load_err(|m| m.replace("input_ids = \"input_ids\"", "input_ids = \"token_ids\""));
    assert!(e.contains("token_ids") && e.contains("input_ids"), "{e}");
    let e = load_err(|m| m.replace("dim = 896", "dim = 768"));
    assert!(e.contains("768") && e.contains("896"), "{e}");
    let e = load_err(|m| m.replace("crop = 224", "crop = 192"));
    assert!(e.contains("192"), "{e}");
    let e = load_err(|m| m.replace("pixels = \"frames\"", "pixels = \"attention_mask\""));
    assert!(e.contains("attention_mask"), "{e}");
    let e = load_err(|m| m.replace("\"{title}\", \"{tags}\"", "\"{headline}\", \"{tags}\""));
    assert!(e.contains("headline"), "{e}");
}

#[test]
fn cuda_without_the_feature_fails_loudly() {
    if cfg!(feature = "cuda") {
        return; // covered by scripts/gpu-check.sh on a GPU machine
    }
    let mut config = Config::default();
    config.embed.device = sailstream::config::Device::Cuda;
    match Embedder::load_from(&default_model(), &config) {
        Err(e) => assert!(e.to_string().contains("cuda"), "{e}"),
        Ok(_) => panic!("device = cuda accepted by a build without CUDA support"),
    }
    // auto falls back to the CPU and says so.
    config.embed.device = sailstream::config::Device::Auto;
    let e = Embedder::load_from(&default_model(), &config).unwrap();
    assert_eq!(e.device(), "cpu");
}

#[test]
fn stage_embeds_pending_versions_and_upgrades_models_without_gaps() -> Result<()> {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path().join("store"))?);
    let mut b = store.batch();
    for (id, title) in [
        ("a", "cat video"),
        ("b", "coffee tutorial"),
        ("c", "rocket launch"),
    ] {
        let it = item(serde_json::json!({"item_id": id, "title": title}));
        b.put_item(&it)?;
        b.put_embed_pending(id, 1)?;
    }
    b.commit()?;
    let embedder = Embedder::load_from(&default_model(), &Config::default())?;
    let mut stage = EmbedStage::new(embedder, store.clone());
    let (report, written) = stage.run_pending(100)?;
    assert_eq!(report.embedded, 3);
    assert_eq!(written.len(), 3);
    assert_eq!(stage.pending(10)?, 0);
    let v1 = store.item_embedding("a")?.unwrap();
    assert_eq!(
        (
            v1.model.as_str(),
            v1.model_version.as_str(),
            v1.item_version
        ),
        ("sail-lite", "0.1.0", 1)
    );

    // A newer item version is queued while the old vector stays readable.
    let mut b = store.batch();
    b.put_item(&item(
        serde_json::json!({"item_id": "a", "title": "cat video (remastered)", "version": 2}),
    ))?;
    b.put_embed_pending("a", 2)?;
    b.commit()?;
    assert_eq!(store.item_embedding("a")?.unwrap().item_version, 1);
    let (report, _) = stage.run_pending(100)?;
    assert_eq!(report.embedded, 1);
    assert_eq!(store.item_embedding("a")?.unwrap().item_version, 2);

    // Nothing to do for a backfill with the same model...
    assert_eq!(stage.backfill(|_, _| {})?.embedded, 0);
    // ...while a new model version re-embeds everything, each old vector served until replaced.
    let models = tempfile::tempdir().unwrap();
    let upgraded = harness::edited_model(models.path(), |m| {
        m.replace("version = \"0.1.0\"", "version = \"0.2.0\"")
    });
    let mut stage = EmbedStage::new(
        Embedder::load_from(&upgraded, &Config::default())?,
        store.clone(),
    );
    assert!(stage.needs_embedding(&store.item("b")?.unwrap())?);
    let report = stage.backfill(|_, _| {})?;
    assert_eq!(report.embedded, 3);
    for id in ["a", "b", "c"] {
        assert_eq!(store.item_embedding(id)?.unwrap().model_version, "0.2.0");
    }
    Ok(())
}

#[test]
fn new_items_get_semantic_ids_from_trained_codebooks() -> Result<()> {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path().join("store"))?);
    let titles = [
        "cat video",
        "kitten playing",
        "coffee tutorial",
        "espresso at home",
        "rocket launch",
        "space mission",
    ];
    let mut b = store.batch();
    for (i, t) in titles.iter().enumerate() {
        let id = format!("s{i}");
        b.put_item(&item(serde_json::json!({"item_id": id, "title": t})))?;
        b.put_embed_pending(&id, 1)?;
    }
    b.commit()?;
    let mut stage = EmbedStage::new(
        Embedder::load_from(&default_model(), &Config::default())?,
        store.clone(),
    );
    stage.run_pending(100)?;
    let mut config = Config::default();
    config.jobs.semantic_id_codebooks = vec![3, 2];
    sailstream::jobs::semantic_ids::run(&store, &config)?;
    let books = store.codebooks()?.unwrap();
    assert_eq!(
        (books.model.as_str(), books.model_version.as_str()),
        ("sail-lite", "0.1.0")
    );

    let mut b = store.batch();
    b.put_item(&item(
        serde_json::json!({"item_id": "new", "title": "a kitten and a cat"}),
    ))?;
    b.put_embed_pending("new", 1)?;
    b.commit()?;
    let (_, written) = stage.run_pending(100)?;
    let e = &written[0];
    assert_eq!(e.semantic_ids.len(), 2);
    assert_eq!(
        e.semantic_ids,
        sailstream::jobs::semantic_ids::assign(&books, &e.vector)
    );
    assert_eq!(store.semantic_ids("new")?.unwrap().1, e.semantic_ids);
    // The new cat item shares its coarse code with the cat items.
    assert_eq!(store.semantic_ids("s0")?.unwrap().1[0], e.semantic_ids[0]);
    Ok(())
}
