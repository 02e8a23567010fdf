//! Moving a block between tiers: re-encoding it in another format (demotion, promotion),
//! compressing it in RAM, spilling it to the disk tier and loading it back, with the
//! payload format blocks have at rest.

use super::*;

impl BlockPool {
    /// Re-encodes a resident block in `format` (demotion to lower precision, or
    /// promotion back to f16 — precision lost stays lost). The ledger must grant any
    /// growth; on error nothing changes.
    pub fn set_format(&mut self, id: BlockId, format: KvFormat) -> Result<(), KvError> {
        match self.encoded(id, format)? {
            Some(new) => self.install(id, new),
            None => Ok(()),
        }
    }

    /// As [`BlockPool::set_format`] for each `(block, format)` of `changes`, encoding on
    /// `threads` when given (blocks are independent, and encoding is most of the work) and
    /// then installing in order. One block per thread is encoded at a time, so the transient
    /// beyond the ledger stays what it is for one block per thread. Stops at the first
    /// error; blocks before it are changed, the one that failed and those after it are not.
    pub fn set_formats(
        &mut self,
        changes: &[(BlockId, KvFormat)],
        threads: Option<&ThreadPool>,
    ) -> Result<(), KvError> {
        let Some(threads) = threads.filter(|t| t.n_threads() > 1) else {
            return changes
                .iter()
                .try_for_each(|&(id, format)| self.set_format(id, format));
        };
        for batch in changes.chunks(threads.n_threads()) {
            let slots: Vec<OnceLock<Result<Option<Storage>, KvError>>> =
                batch.iter().map(|_| OnceLock::new()).collect();
            let next = AtomicUsize::new(0);
            let this = &*self;
            threads.run(|_| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&(id, format)) = batch.get(i) else {
                        break;
                    };
                    // Each index is taken once, so each slot is set once.
                    let _ = slots[i].set(this.encoded(id, format));
                }
            });
            for (slot, &(id, _)) in slots.into_iter().zip(batch) {
                // `run` returned, so every index was taken and every slot set.
                if let Some(new) = slot.into_inner().unwrap_or(Ok(None))? {
                    self.install(id, new)?;
                }
            }
        }
        Ok(())
    }

    /// Block `id` encoded in `format`, or `None` when it already is.
    fn encoded(&self, id: BlockId, format: KvFormat) -> Result<Option<Storage>, KvError> {
        let geom = self.geom_of(id);
        if !format.supports(&geom) {
            return Err(KvError::Unsupported(format));
        }
        let m = &self.metas[id.0 as usize];
        if m.format == format && !m.compressed && m.tier != Tier::Disk {
            return Ok(None);
        }
        let nt = m.filled as usize;
        Ok(Some(match (self.view(id)?, format) {
            (KvBlock::F16(_), KvFormat::F16) => return Ok(None),
            (KvBlock::Quant(from, b), KvFormat::F16) => {
                let mut d = vec![0u16; geom.block_bytes(KvFormat::F16) / 2].into_boxed_slice();
                kvquant::decode_block(from, &geom, b, &mut d);
                Storage::F16(d)
            }
            (v, f) => Storage::Quant(f, kvquant::transcode(&geom, v, f, nt).into_boxed_slice()),
        }))
    }

    /// Replaces block `id`'s storage with `new`, after the ledger granted any growth.
    fn install(&mut self, id: BlockId, new: Storage) -> Result<(), KvError> {
        let old = self.storage[id.0 as usize].ram_bytes();
        self.grow_account(new.ram_bytes().saturating_sub(old))?;
        self.set_storage(id, new);
        self.sync_reservation();
        Ok(())
    }

    /// Compresses a cold (4/2-bit) block in RAM; it must be promoted before attention
    /// reads it again. Kept uncompressed if compression would not shrink it.
    pub fn compress(&mut self, id: BlockId, codec: Compression) -> Result<(), KvError> {
        let Storage::Quant(format, raw) = &self.storage[id.0 as usize] else {
            return Err(KvError::NotResident(id));
        };
        let mut out = Vec::new();
        kvdisk::compress(codec, raw, &mut out).map_err(|e| KvError::Disk(e.to_string()))?;
        if out.len() >= raw.len() {
            return Ok(());
        }
        let s = Storage::Packed {
            format: *format,
            codec,
            raw: raw.len(),
            bytes: out.into_boxed_slice(),
        };
        self.set_storage(id, s);
        self.sync_reservation();
        Ok(())
    }

    /// Brings a compressed block back to its readable quantized form.
    pub fn decompress(&mut self, id: BlockId) -> Result<(), KvError> {
        let Storage::Packed {
            format, codec, raw, ..
        } = &self.storage[id.0 as usize]
        else {
            return Ok(());
        };
        let (format, codec, raw) = (*format, *codec, *raw);
        // The decoded block is reserved before it is allocated: while both copies are
        // held, the ledger counts both (the compressed one is freed when the decoded one
        // is installed, and the reservation shrinks back to the storage then).
        self.grow_account(raw as u64)?;
        let Storage::Packed { bytes, .. } = &self.storage[id.0 as usize] else {
            unreachable!("matched above");
        };
        let mut out = Vec::with_capacity(raw);
        let r = kvdisk::decompress(codec, bytes, raw, &mut out);
        if let Err(e) = r {
            self.sync_reservation();
            return Err(KvError::Disk(e.to_string()));
        }
        self.set_storage(id, Storage::Quant(format, out.into_boxed_slice()));
        self.sync_reservation();
        Ok(())
    }

    /// Writes a resident block to `store` under `key` and frees its RAM. If the write
    /// fails (a full disk, a read-only store) the block stays as it was.
    pub fn spill(&mut self, id: BlockId, store: &BlockStore, key: u64) -> Result<(), KvError> {
        let payload = match &self.storage[id.0 as usize] {
            // Decoded into a transient buffer rather than installed: a failed write must
            // not leave the block bigger than before.
            Storage::Packed {
                format,
                codec,
                raw,
                bytes,
            } => {
                let mut out = Vec::with_capacity(*raw);
                kvdisk::decompress(*codec, bytes, *raw, &mut out)
                    .map_err(|e| KvError::Disk(e.to_string()))?;
                let m = &self.metas[id.0 as usize];
                encode_payload(*format, m.filled, m.thin, &out)
            }
            _ => self.payload(id)?,
        };
        store
            .put(key, &payload)
            .map_err(|e| KvError::Disk(e.to_string()))?;
        let format = self.metas[id.0 as usize].format;
        self.set_storage(id, Storage::Disk { format, key });
        self.sync_reservation();
        Ok(())
    }

    /// Reads a disk-tier block back into RAM, verified. A missing, corrupt or mismatched
    /// file is reported as [`KvError::Lost`]: the block must be recomputed, never used.
    pub fn load(&mut self, id: BlockId, store: &BlockStore) -> Result<(), KvError> {
        let Storage::Disk { key, .. } = self.storage[id.0 as usize] else {
            return Ok(());
        };
        self.load_fetched(id, store.get(key).map_err(|e| e.to_string()))
    }

    /// [`BlockPool::load`] from what a read of the block's file gave (a payload, no file,
    /// or why the file was refused), read here or ahead by a prefetcher.
    pub(crate) fn load_fetched(
        &mut self,
        id: BlockId,
        got: Result<Option<Vec<u8>>, String>,
    ) -> Result<(), KvError> {
        let Storage::Disk { format, .. } = self.storage[id.0 as usize] else {
            return Ok(());
        };
        let payload = match got {
            Ok(Some(p)) => p,
            Ok(None) => return Err(KvError::Lost(id, "block file missing".into())),
            Err(e) => return Err(KvError::Lost(id, e)),
        };
        self.install_payload(id, &payload, Some(format))
    }

    /// Fills a fresh block from a verified disk payload (prefix reuse across runs), which
    /// must hold a block in `format`.
    pub(crate) fn fill_prefix_payload(
        &mut self,
        id: BlockId,
        payload: &[u8],
        format: KvFormat,
    ) -> Result<(), KvError> {
        self.install_payload(id, payload, Some(format))
    }

    /// Replaces block `id`'s storage with a payload's, if it matches the layout (and
    /// `expect`, when given); the ledger must grant any growth.
    fn install_payload(
        &mut self,
        id: BlockId,
        payload: &[u8],
        expect: Option<KvFormat>,
    ) -> Result<(), KvError> {
        let (f, filled, thin, body) = decode_payload(payload, &self.layout)
            .ok_or_else(|| KvError::Lost(id, "block payload does not match the layout".into()))?;
        if expect.is_some_and(|e| e != f) {
            return Err(KvError::Lost(id, "block file holds another format".into()));
        }
        let s = make_storage(f, body);
        let had = self.storage[id.0 as usize].ram_bytes();
        self.grow_account(s.ram_bytes().saturating_sub(had))?;
        self.set_storage(id, s);
        self.sync_reservation();
        self.metas[id.0 as usize].filled = filled;
        self.metas[id.0 as usize].thin = thin;
        Ok(())
    }

    /// The payload [`BlockPool::spill`] writes for a resident block.
    pub(crate) fn payload(&self, id: BlockId) -> Result<Vec<u8>, KvError> {
        let (filled, thin) = (
            self.metas[id.0 as usize].filled,
            self.metas[id.0 as usize].thin,
        );
        match &self.storage[id.0 as usize] {
            Storage::Quant(f, b) => Ok(encode_payload(*f, filled, thin, b)),
            Storage::F16(b) => Ok(encode_payload(
                KvFormat::F16,
                filled,
                thin,
                &b.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>(),
            )),
            _ => Err(KvError::NotResident(id)),
        }
    }
}

fn make_storage(f: KvFormat, body: &[u8]) -> Storage {
    match f {
        KvFormat::F16 => Storage::F16(
            body.chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .collect(),
        ),
        f => Storage::Quant(f, body.to_vec().into_boxed_slice()),
    }
}

/// `[format id u8][filled u16 le][block bytes]`; a thin block's id has bit 0x80 set and
/// its bytes are the global layers' only.
fn encode_payload(f: KvFormat, filled: u16, thin: bool, body: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(body.len() + 3);
    p.push(payload_tag(f) | if thin { THIN_TAG } else { 0 });
    p.extend_from_slice(&filled.to_le_bytes());
    p.extend_from_slice(body);
    p
}

/// A payload's first byte: its format, and for quantized ones the chunk layout — 0x40
/// marks the layout with one-byte log scales; payloads of the earlier layout (f16 scales,
/// tagged by bits alone) no longer decode and are recomputed, never misread.
fn payload_tag(f: KvFormat) -> u8 {
    match f {
        KvFormat::F16 => 16,
        q => 0x40 | q.bits() as u8,
    }
}

/// The payload tag's bit for a thin block.
const THIN_TAG: u8 = 0x80;

fn decode_payload<'a>(p: &'a [u8], layout: &KvLayout) -> Option<(KvFormat, u16, bool, &'a [u8])> {
    let (&id, rest) = p.split_first()?;
    let thin = id & THIN_TAG != 0;
    if thin && layout.window().is_none() {
        return None;
    }
    let f = KvFormat::ALL
        .into_iter()
        .find(|&f| payload_tag(f) == id & !THIN_TAG)?;
    let filled = u16::from_le_bytes([*rest.first()?, *rest.get(1)?]);
    let body = &rest[2..];
    let geom = if thin {
        layout.thin_geom()
    } else {
        layout.geom()
    };
    (body.len() == geom.block_bytes(f) && filled as usize <= layout.block_tokens())
        .then_some((f, filled, thin, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_of_the_earlier_chunk_layout_are_refused() {
        let layout = KvLayout::new(2, 1, 32, 16).unwrap();
        let body = vec![0u8; layout.geom().block_bytes(KvFormat::Q4)];
        let p = encode_payload(KvFormat::Q4, 16, false, &body);
        assert_eq!(decode_payload(&p, &layout).map(|d| d.0), Some(KvFormat::Q4));
        // The same body tagged as the f16-scale layout tagged it (bits alone).
        let mut old = p.clone();
        old[0] = 4;
        assert!(decode_payload(&old, &layout).is_none());
        let f16 = vec![0u8; layout.geom().block_bytes(KvFormat::F16)];
        let p = encode_payload(KvFormat::F16, 16, false, &f16);
        assert_eq!(
            decode_payload(&p, &layout).map(|d| d.0),
            Some(KvFormat::F16)
        );
    }
}
