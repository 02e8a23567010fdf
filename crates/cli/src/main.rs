//! The llmem binary: wires the library crates into the `llmem` command line.
fn main() {
    println!("llmem");
}
