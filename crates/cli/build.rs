// Sets cfg(llmem_model) for the tests that run the default model: see the included file.
include!("../../scripts/model_cfg.rs");

fn main() {
    model_cfg();
    // The server's end-to-end test drives the real `openai` Python client: it runs where
    // a Python with it is named (`LLMEM_TEST_PYTHON`, as `.ci/run` sets up), or under CI
    // (where a missing one is a failure), and is reported ignored elsewhere.
    println!("cargo::rustc-check-cfg=cfg(llmem_openai)");
    println!("cargo::rerun-if-env-changed=LLMEM_TEST_PYTHON");
    let named =
        std::env::var_os("LLMEM_TEST_PYTHON").is_some_and(|p| std::path::Path::new(&p).is_file());
    if named || std::env::var_os("CI").is_some() {
        println!("cargo::rustc-cfg=llmem_openai");
    }
}
