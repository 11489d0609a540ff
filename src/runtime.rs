//! Locating and loading ONNX Runtime. The library is not linked at build time (`ort`'s `load-dynamic`): the
//! set-up script installs it from the PyPI wheel, and it is found at run time in this order:
//! `runtime.onnxruntime_lib` in config, `ORT_DYLIB_PATH`, then the set-up script's install location.

use std::path::PathBuf;
use std::sync::OnceLock;

use crate::config::Config;
use crate::error::{Error, Result};

/// The ONNX Runtime release the set-up script installs and this build's `ort` (api-31) is made for.
pub const ONNXRUNTIME_VERSION: &str = "1.31.1";

/// Root of what the set-up script installs: `$SAILSTREAM_HOME`, else `~/.local/share/sailstream`.
pub fn install_root() -> PathBuf {
    if let Some(home) = std::env::var_os("SAILSTREAM_HOME") {
        return PathBuf::from(home);
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
    home.join(".local/share/sailstream")
}

pub fn default_library_path() -> PathBuf {
    install_root()
        .join(format!("onnxruntime-{ONNXRUNTIME_VERSION}"))
        .join(format!("libonnxruntime.so.{ONNXRUNTIME_VERSION}"))
}

pub fn library_path(config: &Config) -> PathBuf {
    if !config.runtime.onnxruntime_lib.is_empty() {
        return PathBuf::from(&config.runtime.onnxruntime_lib);
    }
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH") {
        return PathBuf::from(p);
    }
    default_library_path()
}

/// Loads ONNX Runtime once per process (ort allows one environment) and returns its build description.
pub fn init(config: &Config) -> Result<&'static str> {
    loaded(config).map(|(_, info)| *info)
}

/// The process-wide ONNX Runtime environment sessions are built in (loading the library on first use).
pub fn environment(config: &Config) -> Result<&'static ort::environment::Environment> {
    loaded(config).map(|(env, _)| env)
}

fn loaded(config: &Config) -> Result<&'static (ort::environment::Environment, &'static str)> {
    // The environment must outlive every session; ort only keeps a weak reference to it.
    static LOADED: OnceLock<
        std::result::Result<(ort::environment::Environment, &'static str), String>,
    > = OnceLock::new();
    let path = library_path(config);
    let outcome = LOADED.get_or_init(|| {
        if !path.exists() {
            return Err(format!(
                "{} does not exist; run scripts/setup.sh (or set ORT_DYLIB_PATH / runtime.onnxruntime_lib)",
                path.display()
            ));
        }
        // Do not wrap a failed load into ort::Error: that retries the load and panics (environment.md).
        let builder = ort::init_from(&path).map_err(|e| e.to_string())?;
        let env = builder
            .with_name("sailstream")
            .build()
            .map_err(|e| e.to_string())?;
        Ok((env, ort::info()))
    });
    outcome.as_ref().map_err(|message| Error::OnnxRuntime {
        context: format!("loading {}", path.display()),
        message: message.clone(),
    })
}
