// Included by the build scripts of the crates whose tests run the default model.
//
// Sets `cfg(llmem_model)` when the model is in the models folder (where
// scripts/fetch-model.sh and `llmem pull` put it: $LLMEM_MODELS, else the user cache
// directory's llmem/models), or in the checkout's own `models/` (where the script put it
// before that folder existed), or when `CI` is set (CI must fetch it, and a test that
// cannot is a failure there). Tests that need the model carry
// `#[cfg_attr(not(llmem_model), ignore = "…")]`, so a machine without it reports them
// as ignored instead of passing them without a check.
fn main() {
    const FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
    println!("cargo::rustc-check-cfg=cfg(llmem_model)");
    for var in ["CI", "LLMEM_MODELS", "XDG_CACHE_HOME", "HOME"] {
        println!("cargo::rerun-if-env-changed={var}");
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    let home = env("HOME").map(std::path::PathBuf::from);
    // The models folder as the script and `llmem pull` find it (the build runs on the
    // machine the tests run on).
    let shared = env("LLMEM_MODELS").map(std::path::PathBuf::from).or_else(|| {
        if cfg!(target_os = "macos") {
            home.as_ref().map(|h| h.join("Library/Caches/llmem/models"))
        } else {
            env("XDG_CACHE_HOME")
                .map(std::path::PathBuf::from)
                .filter(|p| p.is_absolute())
                .or_else(|| home.as_ref().map(|h| h.join(".cache")))
                .map(|c| c.join("llmem/models"))
        }
    });
    let mut found = false;
    for dir in shared.into_iter().chain([root.join("models")]) {
        println!("cargo::rerun-if-changed={}", dir.display());
        found |= dir.join(FILE).is_file();
    }
    if std::env::var_os("CI").is_some() || found {
        println!("cargo::rustc-cfg=llmem_model");
    }
}
