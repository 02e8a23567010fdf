//! The ggml tensor element types and their block layouts.

use std::fmt;

/// A ggml tensor element type, as stored in a GGUF tensor-info record.
///
/// Quantized types store elements in blocks: `block_size()` elements take `type_size()`
/// bytes. A row's first dimension must be a multiple of the block size.
///
/// The discriminants are ggml's `enum ggml_type` ids; ids that ggml has retired (4, 5 and
/// 31–33, 36–38) or that this reader does not know are refused at parse time.
#[allow(non_camel_case_types)] // ggml's own names (Q4_0, IQ2_XXS) are what users search for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
#[non_exhaustive]
pub enum GgmlType {
    F32 = 0,
    F16 = 1,
    Q4_0 = 2,
    Q4_1 = 3,
    Q5_0 = 6,
    Q5_1 = 7,
    Q8_0 = 8,
    Q8_1 = 9,
    Q2_K = 10,
    Q3_K = 11,
    Q4_K = 12,
    Q5_K = 13,
    Q6_K = 14,
    Q8_K = 15,
    IQ2_XXS = 16,
    IQ2_XS = 17,
    IQ3_XXS = 18,
    IQ1_S = 19,
    IQ4_NL = 20,
    IQ3_S = 21,
    IQ2_S = 22,
    IQ4_XS = 23,
    I8 = 24,
    I16 = 25,
    I32 = 26,
    I64 = 27,
    F64 = 28,
    IQ1_M = 29,
    BF16 = 30,
    TQ1_0 = 34,
    TQ2_0 = 35,
}

/// `QK_K`: elements in one super-block of the k-quants and i-quants.
const QK_K: u64 = 256;

// Declarative table: (type, name, elements per block, bytes per block).
//
// Byte sizes are `sizeof(block_*)` from ggml's `ggml-common.h`, which static_asserts each
// one; a ggml_half is 2 bytes. For example block_q4_K = 2 halves + 12 scale bytes + 128
// nibble bytes = 144, and block_tq1_0 = (256 - 16) / 5 + 256 / 64 + 2 = 54.
const TABLE: [(GgmlType, &str, u64, u64); 31] = [
    (GgmlType::F32, "f32", 1, 4),
    (GgmlType::F16, "f16", 1, 2),
    (GgmlType::Q4_0, "q4_0", 32, 2 + 16),
    (GgmlType::Q4_1, "q4_1", 32, 2 + 2 + 16),
    (GgmlType::Q5_0, "q5_0", 32, 2 + 4 + 16),
    (GgmlType::Q5_1, "q5_1", 32, 2 + 2 + 4 + 16),
    (GgmlType::Q8_0, "q8_0", 32, 2 + 32),
    (GgmlType::Q8_1, "q8_1", 32, 2 + 2 + 32),
    (GgmlType::Q2_K, "q2_K", QK_K, QK_K / 16 + QK_K / 4 + 2 + 2),
    (GgmlType::Q3_K, "q3_K", QK_K, QK_K / 8 + QK_K / 4 + 12 + 2),
    (GgmlType::Q4_K, "q4_K", QK_K, 2 + 2 + 12 + QK_K / 2),
    (
        GgmlType::Q5_K,
        "q5_K",
        QK_K,
        2 + 2 + 12 + QK_K / 8 + QK_K / 2,
    ),
    (
        GgmlType::Q6_K,
        "q6_K",
        QK_K,
        QK_K / 2 + QK_K / 4 + QK_K / 16 + 2,
    ),
    (GgmlType::Q8_K, "q8_K", QK_K, 4 + QK_K + (QK_K / 16) * 2),
    (GgmlType::IQ2_XXS, "iq2_xxs", QK_K, 2 + (QK_K / 8) * 2),
    (
        GgmlType::IQ2_XS,
        "iq2_xs",
        QK_K,
        2 + (QK_K / 8) * 2 + QK_K / 32,
    ),
    (GgmlType::IQ3_XXS, "iq3_xxs", QK_K, 2 + 3 * (QK_K / 8)),
    (GgmlType::IQ1_S, "iq1_s", QK_K, 2 + QK_K / 8 + QK_K / 16),
    (GgmlType::IQ4_NL, "iq4_nl", 32, 2 + 16),
    (
        GgmlType::IQ3_S,
        "iq3_s",
        QK_K,
        2 + 13 * (QK_K / 32) + QK_K / 64,
    ),
    (GgmlType::IQ2_S, "iq2_s", QK_K, 2 + QK_K / 4 + QK_K / 16),
    (
        GgmlType::IQ4_XS,
        "iq4_xs",
        QK_K,
        2 + 2 + QK_K / 64 + QK_K / 2,
    ),
    (GgmlType::I8, "i8", 1, 1),
    (GgmlType::I16, "i16", 1, 2),
    (GgmlType::I32, "i32", 1, 4),
    (GgmlType::I64, "i64", 1, 8),
    (GgmlType::F64, "f64", 1, 8),
    (
        GgmlType::IQ1_M,
        "iq1_m",
        QK_K,
        QK_K / 8 + QK_K / 16 + QK_K / 32,
    ),
    (GgmlType::BF16, "bf16", 1, 2),
    (
        GgmlType::TQ1_0,
        "tq1_0",
        QK_K,
        (QK_K - 4 * QK_K / 64) / 5 + QK_K / 64 + 2,
    ),
    (GgmlType::TQ2_0, "tq2_0", QK_K, QK_K / 4 + 2),
];

impl GgmlType {
    /// Every type this reader knows, in id order.
    pub const ALL: [GgmlType; 31] = {
        let mut all = [GgmlType::F32; 31];
        let mut i = 0;
        while i < TABLE.len() {
            all[i] = TABLE[i].0;
            i += 1;
        }
        all
    };

    /// The type with ggml id `id`, or `None` for a retired or unknown id.
    pub fn from_u32(id: u32) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.id() == id)
    }

    /// The ggml id written in GGUF tensor-info records.
    pub const fn id(self) -> u32 {
        self as u32
    }

    const fn row(self) -> (&'static str, u64, u64) {
        let mut i = 0;
        while i < TABLE.len() {
            if TABLE[i].0 as u32 == self as u32 {
                return (TABLE[i].1, TABLE[i].2, TABLE[i].3);
            }
            i += 1;
        }
        // Every variant has a row: the `table_covers_every_variant` test checks it.
        ("?", 1, 0)
    }

    /// ggml's lowercase name (`"q4_K"`, `"bf16"`).
    pub const fn name(self) -> &'static str {
        self.row().0
    }

    /// Elements per block (1 for plain types, 32 or 256 for quantized ones).
    pub const fn block_size(self) -> u64 {
        self.row().1
    }

    /// Bytes per block.
    pub const fn type_size(self) -> u64 {
        self.row().2
    }

    /// Whether elements are stored in multi-element blocks.
    pub const fn is_quantized(self) -> bool {
        self.block_size() > 1
    }

    /// Bytes taken by `n_elements` elements, or `None` when `n_elements` is not a multiple
    /// of the block size or the byte count overflows `u64`.
    pub const fn bytes_for(self, n_elements: u64) -> Option<u64> {
        let block = self.block_size();
        if !n_elements.is_multiple_of(block) {
            return None;
        }
        (n_elements / block).checked_mul(self.type_size())
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_covers_every_variant_in_id_order() {
        for pair in GgmlType::ALL.windows(2) {
            assert!(
                pair[0].id() < pair[1].id(),
                "{:?} before {:?}",
                pair[0],
                pair[1]
            );
        }
        for t in GgmlType::ALL {
            assert_ne!(t.name(), "?");
            assert_eq!(GgmlType::from_u32(t.id()), Some(t));
            assert!(t.type_size() > 0);
        }
    }

    #[test]
    fn retired_ids_are_unknown() {
        for id in [4, 5, 31, 32, 33, 36, 37, 38, 1000, u32::MAX] {
            assert_eq!(GgmlType::from_u32(id), None, "id {id}");
        }
    }

    #[test]
    fn sizes_match_ggml_common_h() {
        // Spot checks against the static_asserts in ggml-common.h.
        let expect = [
            (GgmlType::Q4_0, 32, 18),
            (GgmlType::Q4_1, 32, 20),
            (GgmlType::Q5_0, 32, 22),
            (GgmlType::Q5_1, 32, 24),
            (GgmlType::Q8_0, 32, 34),
            (GgmlType::Q8_1, 32, 36),
            (GgmlType::Q2_K, 256, 84),
            (GgmlType::Q3_K, 256, 110),
            (GgmlType::Q4_K, 256, 144),
            (GgmlType::Q5_K, 256, 176),
            (GgmlType::Q6_K, 256, 210),
            (GgmlType::Q8_K, 256, 292),
            (GgmlType::IQ2_XXS, 256, 66),
            (GgmlType::IQ2_XS, 256, 74),
            (GgmlType::IQ3_XXS, 256, 98),
            (GgmlType::IQ1_S, 256, 50),
            (GgmlType::IQ4_NL, 32, 18),
            (GgmlType::IQ3_S, 256, 110),
            (GgmlType::IQ2_S, 256, 82),
            (GgmlType::IQ4_XS, 256, 136),
            (GgmlType::IQ1_M, 256, 56),
            (GgmlType::TQ1_0, 256, 54),
            (GgmlType::TQ2_0, 256, 66),
            (GgmlType::BF16, 1, 2),
            (GgmlType::F64, 1, 8),
        ];
        for (t, block, size) in expect {
            assert_eq!((t.block_size(), t.type_size()), (block, size), "{t}");
        }
    }

    #[test]
    fn bytes_for_checks_blocks_and_overflow() {
        assert_eq!(
            GgmlType::Q4_1.bytes_for(576 * 49152),
            Some(576 * 49152 / 32 * 20)
        );
        assert_eq!(GgmlType::Q8_0.bytes_for(33), None);
        assert_eq!(GgmlType::F64.bytes_for(u64::MAX), None);
    }
}
