// Included by the build scripts of the crates whose tests run the default model.
//
// Sets `cfg(llmem_model)` when the model is in `models/` (fetched by
// scripts/fetch-model.sh) or when `CI` is set (CI must fetch it, and a test that cannot
// is a failure there). Tests that need the model carry
// `#[cfg_attr(not(llmem_model), ignore = "…")]`, so a machine without it reports them
// as ignored instead of passing them without a check.
fn main() {
    println!("cargo::rustc-check-cfg=cfg(llmem_model)");
    println!("cargo::rerun-if-env-changed=CI");
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let model = root.join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    println!("cargo::rerun-if-changed={}", root.join("models").display());
    if std::env::var_os("CI").is_some() || model.is_file() {
        println!("cargo::rustc-cfg=llmem_model");
    }
}
