// Included by the build scripts of the crates whose tests run real models.
//
// Sets `cfg(llmem_model)` when the default model is in `models/` (fetched by
// scripts/fetch-model.sh) or when `CI` is set (CI must fetch it, and a test that cannot
// is a failure there). Tests that need the model carry
// `#[cfg_attr(not(llmem_model), ignore = "…")]`, so a machine without it reports them
// as ignored instead of passing them without a check.
//
// The other reference models (see `EXTRA_MODELS`) are not fetched by the project: they
// are looked for in `$LLMEM_MODELS`, else `~/.cache/llmem/models`. Each one found sets
// its own cfg (`llmem_model_qwen05`, …) and an environment variable holding its path
// (`LLMEM_MODEL_QWEN05`, …) for the tests, which read it with `option_env!`.

/// (cfg suffix, file name) of each optional reference model.
const EXTRA_MODELS: [(&str, &str); 3] = [
    ("qwen05", "qwen2.5-coder-0.5b-instruct-awq-q4_k_m.gguf"),
    ("qwen15", "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"),
    ("gemma3", "gemma-3-270m-q4_k_m.gguf"),
];

fn main() {
    println!("cargo::rustc-check-cfg=cfg(llmem_model)");
    println!("cargo::rerun-if-env-changed=CI");
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let model = root.join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    println!("cargo::rerun-if-changed={}", root.join("models").display());
    if std::env::var_os("CI").is_some() || model.is_file() {
        println!("cargo::rustc-cfg=llmem_model");
    }

    println!("cargo::rerun-if-env-changed=LLMEM_MODELS");
    println!("cargo::rerun-if-env-changed=HOME");
    let dir = std::env::var_os("LLMEM_MODELS")
        .map(std::path::PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .map(|h| std::path::PathBuf::from(h).join(".cache/llmem/models"))
        });
    if let Some(dir) = &dir
        && dir.is_dir()
    {
        println!("cargo::rerun-if-changed={}", dir.display());
    }
    for (name, file) in EXTRA_MODELS {
        println!("cargo::rustc-check-cfg=cfg(llmem_model_{name})");
        let Some(path) = dir.as_ref().map(|d| d.join(file)) else {
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
