//! The shape the sliding-window tests share: six layers, two of them global (as Gemma
//! 3's pattern, shorter), blocks of 4 tokens, a window of 8, and the f16 bits each
//! written row holds.

use kvcache::KvLayout;

pub const BT: usize = 4;
pub const WINDOW: usize = 8;
/// Layers 2 and 5 are global, the rest windowed.
pub const WINDOWED: [bool; 6] = [true, true, false, true, true, false];
pub const HD: usize = 32;

pub fn layout() -> KvLayout {
    KvLayout::new(6, 1, HD, BT)
        .unwrap()
        .with_window(WINDOW, &WINDOWED)
        .unwrap()
}

/// The f16 bits written for (`pos`, `layer`, K or V, channel `d`).
pub fn bits(pos: usize, layer: usize, kv: usize, d: usize) -> u16 {
    let x = ((pos * 7 + layer * 3 + kv) as f32 * 0.13 + d as f32 * 0.05).sin();
    half::f16::from_f32(x).to_bits()
}
