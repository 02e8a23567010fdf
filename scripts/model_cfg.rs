// Included by the build scripts of the crates whose tests run real models.
//
// Sets `cfg(llmem_model)` when the model is in the models folder (where
// scripts/fetch-model.sh and `llmem pull` put it: $LLMEM_MODELS, else the user cache
// directory's llmem/models), or in the checkout's own `models/` (where the script put it
// before that folder existed), or when `CI` is set (CI must fetch it, and a test that
// cannot is a failure there). Tests that need the model carry
// `#[cfg_attr(not(llmem_model), ignore = "…")]`, so a machine without it reports them
// as ignored instead of passing them without a check.
//
// The other reference models (see `EXTRA_MODELS`; `scripts/fetch-model.sh NAME` or
// `llmem pull NAME` fetch them) are looked for in the models folder. Each one found sets
// its own cfg (`llmem_model_qwen05`, …) and an environment variable holding its path
// (`LLMEM_MODEL_QWEN05`, …) for the tests, which read it with `option_env!`.

/// (cfg suffix, file name) of each optional reference model.
const EXTRA_MODELS: [(&str, &str); 3] = [
    ("qwen05", "qwen2.5-coder-0.5b-instruct-awq-q4_k_m.gguf"),
    ("qwen15", "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"),
    ("gemma3", "gemma-3-270m-q4_k_m.gguf"),
];

fn model_cfg() {
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
    for dir in shared.iter().cloned().chain([root.join("models")]) {
        println!("cargo::rerun-if-changed={}", dir.display());
        found |= dir.join(FILE).is_file();
    }
    if std::env::var_os("CI").is_some() || found {
        println!("cargo::rustc-cfg=llmem_model");
    }

    for (name, file) in EXTRA_MODELS {
        println!("cargo::rustc-check-cfg=cfg(llmem_model_{name})");
        let Some(path) = shared.as_ref().map(|d| d.join(file)) else {
            continue;
        };
        if path.is_file() {
            println!("cargo::rerun-if-changed={}", path.display());
            println!("cargo::rustc-cfg=llmem_model_{name}");
            println!(
                "cargo::rustc-env=LLMEM_MODEL_{}={}",
                name.to_uppercase(),
                path.display()
            );
        }
    }
}
