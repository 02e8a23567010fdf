// Sets cfg(llmem_model) for the tests that run the default model: see the included file.
include!("../../scripts/model_cfg.rs");

fn main() {
    model_cfg();
}
