//! Makes sure the local model that `tests/llm_local.rs` runs is there: on a new machine, the
//! README's test command fetches it once (about 100 MB) with `scripts/fetch-model`.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    // Where `scripts/fetch-model` puts the model; a change there (or its absence) runs this again.
    let var = |name| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    let model = var("SOPHON_MODEL").or_else(|| {
        let cache = var("XDG_CACHE_HOME").or_else(|| var("HOME").map(|home| home.join(".cache")))?;
        Some(cache.join("sophon/SmolLM2-135M-Instruct.Q4_1.gguf"))
    });
    if let Some(model) = &model {
        println!("cargo::rerun-if-changed={}", model.display());
    }
    let missing = model.as_ref().is_some_and(|m| !m.is_file());
    println!("cargo::rerun-if-changed=../scripts/fetch-model");
    println!("cargo::rerun-if-env-changed=SOPHON_MODEL");
    println!("cargo::rerun-if-env-changed=XDG_CACHE_HOME");
    match Command::new("sh").arg("../scripts/fetch-model").status() {
        Ok(status) if status.success() => {
            if let (true, Some(model)) = (missing, &model) {
                println!("cargo::warning=fetched the model for the local LLM tests into {}", model.display());
            }
        }
        Ok(status) => println!("cargo::warning=scripts/fetch-model failed ({status}); the local model tests will fail"),
        Err(e) => println!("cargo::warning=cannot run scripts/fetch-model ({e}); the local model tests will fail"),
    }
}
