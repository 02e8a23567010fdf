//! Profiles: built-ins scaled to the machine, `auto`, YAML files, and every kind of bad file.

use budget::{
    BuildError, Bytes, MAX_PROFILE_BYTES, ModelNeeds, Policy, Profile, ProfileError,
    ProfileFileError, SizeError,
};

fn limits(profile: &Profile) -> Vec<(&str, Policy, Bytes)> {
    profile
        .pools()
        .iter()
        .map(|p| (p.name().as_str(), p.policy(), p.limit()))
        .collect()
}

/// `gib` GiB of 128, taken of `machine`.
fn of_128(machine: Bytes, gib: u64) -> Bytes {
    Bytes(machine.get() / 128 * gib)
}

#[test]
fn production_keeps_the_seed_figures_on_the_seed_machine() {
    let profile = Profile::builtin("production", Bytes::gib(128)).expect("builds");
    assert_eq!(profile.total(), Bytes::gib(128));
    assert_eq!(
        limits(&profile),
        [
            ("weights", Policy::Persistent, Bytes::gib(70)),
            ("kv", Policy::Tiered, Bytes::gib(15)),
            ("scratch", Policy::Circular, Bytes::gib(5)),
            ("documents", Policy::ContentHash, Bytes::gib(18)),
            ("reserve", Policy::Reserved, Bytes::gib(15)),
        ]
    );
    let order: Vec<&str> = profile.priority().map(budget::PoolName::as_str).collect();
    assert_eq!(order, ["scratch", "weights", "kv", "documents", "reserve"]);
}

#[test]
fn builtins_scale_in_proportion_on_a_24_gib_machine() {
    let machine = Bytes::gib(24);
    let production = Profile::builtin("production", machine).expect("builds");
    let expected = [70, 15, 5, 18, 15].map(|gib| of_128(machine, gib));
    assert_eq!(
        production
            .pools()
            .iter()
            .map(budget::PoolSpec::limit)
            .collect::<Vec<_>>(),
        expected
    );
    assert_eq!(
        production.pools()[0].limit(),
        Bytes(13 * (1 << 30) + (1 << 27)),
        "13.125 GiB"
    );

    let development = Profile::builtin("development", machine).expect("builds");
    let expected = [50, 12, 4, 13, 24].map(|gib| of_128(machine, gib));
    assert_eq!(
        development
            .pools()
            .iter()
            .map(budget::PoolSpec::limit)
            .collect::<Vec<_>>(),
        expected
    );
    assert_eq!(development.total(), machine);

    let budget = development.to_budget();
    let sum: u64 = budget.pools().map(|(_, p)| p.limit().get()).sum();
    assert!(sum <= machine.get());
    assert_eq!(budget.snapshot().unassigned, Bytes(machine.get() - sum));
}

#[test]
fn builtins_scale_on_odd_machine_sizes_without_overcommitting() {
    for machine in [
        Bytes(1),
        Bytes(127),
        Bytes(8_000_000_000),
        Bytes::gib(7),
        Bytes(u64::MAX),
    ] {
        for name in Profile::BUILTIN {
            let profile = Profile::builtin(name, machine).expect("builds");
            let sum = profile
                .pools()
                .iter()
                .map(|p| u128::from(p.limit().get()))
                .sum::<u128>();
            assert!(sum <= u128::from(machine.get()), "{name} on {machine}");
        }
    }
}

#[test]
fn unknown_builtins_and_empty_machines_are_refused() {
    assert!(matches!(
        Profile::builtin("auto", Bytes::gib(8)),
        Err(ProfileError::UnknownProfile { name }) if name == "auto"
    ));
    assert!(matches!(
        Profile::builtin("production", Bytes::ZERO),
        Err(ProfileError::Generated {
            cause: BuildError::ZeroTotal,
            ..
        })
    ));
}

#[test]
fn auto_gives_the_model_what_it_needs_and_keeps_the_reserve() {
    let machine = Bytes::gib(16);
    let needs = ModelNeeds {
        weights: Bytes::gib(4),
        kv: Bytes::gib(2),
        scratch: Bytes::mib(512),
    };
    let profile = Profile::auto(machine, &needs).expect("fits");
    assert_eq!(profile.name(), "auto");
    let l = limits(&profile);
    assert_eq!(l[0], ("weights", Policy::Persistent, Bytes::gib(4)));
    assert_eq!(l[1], ("kv", Policy::Tiered, Bytes::gib(2)));
    assert_eq!(l[2], ("scratch", Policy::Circular, Bytes::mib(512)));
    assert_eq!(
        l[3],
        ("documents", Policy::ContentHash, of_128(machine, 18))
    );
    assert_eq!(l[4], ("reserve", Policy::Reserved, of_128(machine, 15)));

    // Little room left: documents get what remains, not their share.
    let tight = ModelNeeds {
        weights: Bytes::gib(13),
        kv: Bytes::mib(512),
        scratch: Bytes::ZERO,
    };
    let profile = Profile::auto(machine, &tight).expect("fits");
    let usable = machine.get() - of_128(machine, 15).get();
    assert_eq!(
        profile.pools()[3].limit(),
        Bytes(usable - Bytes::mib(13 * 1024 + 512).get())
    );
}

#[test]
fn auto_says_by_how_much_a_model_does_not_fit() {
    let needs = ModelNeeds {
        weights: Bytes::gib(70),
        kv: Bytes::gib(8),
        scratch: Bytes::gib(1),
    };
    let err = Profile::auto(Bytes::gib(64), &needs).expect_err("too big");
    let ProfileError::DoesNotFit { needed, usable, .. } = &err else {
        panic!("wrong error: {err}");
    };
    assert_eq!(*needed, Bytes::gib(79));
    assert_eq!(
        usable.get(),
        Bytes::gib(64).get() - of_128(Bytes::gib(64), 15).get()
    );
    let short = needed.get() - usable.get();
    assert!(
        err.to_string().contains(&format!("short by {short} bytes")),
        "{err}"
    );
    let overflow = ModelNeeds {
        weights: Bytes(u64::MAX),
        kv: Bytes(1),
        scratch: Bytes::ZERO,
    };
    assert!(matches!(
        Profile::auto(Bytes::gib(64), &overflow),
        Err(ProfileError::DoesNotFit { .. })
    ));
}

const GOOD: &str = "\
# a workstation
name: workstation
total: 64GiB
priority: [scratch, weights, kv, documents]
pools:
  weights:   { policy: persistent,   limit: 0.5 }
  kv:        { policy: tiered,       limit: 12GiB }
  scratch:   { policy: circular,     limit: 1.5 GiB }
  documents: { policy: content-hash, limit: 12.5% }
  reserve:
    policy: reserved
    limit: 8589934592
";

#[test]
fn a_good_file_reads_with_units_shares_and_priority() {
    let profile = Profile::from_yaml_str(GOOD).expect("valid");
    assert_eq!(profile.name(), "workstation");
    assert_eq!(profile.total(), Bytes::gib(64));
    assert_eq!(
        limits(&profile),
        [
            ("weights", Policy::Persistent, Bytes::gib(32)),
            ("kv", Policy::Tiered, Bytes::gib(12)),
            ("scratch", Policy::Circular, Bytes::mib(1536)),
            ("documents", Policy::ContentHash, Bytes::gib(8)),
            ("reserve", Policy::Reserved, Bytes::gib(8)),
        ]
    );
    let order: Vec<&str> = profile.priority().map(budget::PoolName::as_str).collect();
    assert_eq!(order, ["scratch", "weights", "kv", "documents", "reserve"]);
    let budget = profile.to_budget();
    let kv = budget.pool_id("kv").expect("pool");
    assert!(budget.try_reserve(kv, Bytes::gib(12)).is_ok());
}

/// Replaces `from` in the good file and reads it.
fn bad(from: &str, to: &str) -> ProfileError {
    assert!(GOOD.contains(from), "{from}");
    let yaml = GOOD.replacen(from, to, 1);
    let err = Profile::from_yaml_str(&yaml).expect_err("refused");
    let text = err.to_string();
    assert!(!text.is_empty());
    err
}

/// Checks that the message names the key and the line.
fn names(err: &ProfileError, key: &str, line: u64) {
    let text = err.to_string();
    assert!(text.contains(&format!("line {line}:")), "{text}");
    assert!(text.contains(&format!("`{key}`")), "{text}");
}

#[test]
fn negative_sizes_are_refused_by_key_and_line() {
    let err = bad("limit: 12GiB", "limit: -12GiB");
    assert!(matches!(
        &err,
        ProfileError::InvalidSize {
            cause: SizeError::Negative { .. },
            ..
        }
    ));
    names(&err, "pools.kv.limit", 7);
    let err = bad("limit: 8589934592", "limit: -5");
    assert!(matches!(
        &err,
        ProfileError::InvalidSize {
            cause: SizeError::Negative { .. },
            ..
        }
    ));
    names(&err, "pools.reserve.limit", 12);
    let err = bad("limit: 0.5", "limit: -0.5");
    names(&err, "pools.weights.limit", 6);
}

#[test]
fn unknown_units_are_refused_by_key_and_line() {
    let err = bad("total: 64GiB", "total: 64 gigs");
    assert!(matches!(
        &err,
        ProfileError::InvalidSize { cause: SizeError::UnknownUnit { unit, .. }, .. } if unit == "gigs"
    ));
    names(&err, "total", 3);
    names(&bad("limit: 12GiB", "limit: 12mb"), "pools.kv.limit", 7);
}

#[test]
fn unknown_keys_are_refused_by_key_and_line() {
    let err = bad("total: 64GiB", "total: 64GiB\ntotl: 1GiB");
    assert!(matches!(&err, ProfileError::UnknownKey { key, line: 4, .. } if key == "totl"));
    names(&err, "totl", 4);
    let err = bad("limit: 12GiB", "limit: 12GiB, sise: 1");
    names(&err, "pools.kv.sise", 7);
    let err = bad(
        "    limit: 8589934592",
        "    limit: 8589934592\n    lend: never",
    );
    names(&err, "pools.reserve.lend", 13);
}

#[test]
fn unknown_policies_are_refused_by_key_and_line() {
    let err = bad("policy: tiered", "policy: lru");
    assert!(matches!(&err, ProfileError::UnknownPolicy { cause, .. } if cause.found == "lru"));
    names(&err, "pools.kv.policy", 7);
    assert!(
        err.to_string().contains("content-hash"),
        "lists the choices: {err}"
    );
}

#[test]
fn pools_summing_past_the_total_are_refused_at_the_pool_that_tips_over() {
    let err = bad("limit: 12GiB", "limit: 30GiB");
    assert!(matches!(
        &err,
        ProfileError::InvalidLayout {
            cause: BuildError::OverCommitted { .. },
            ..
        }
    ));
    names(&err, "pools.documents.limit", 9);
    assert!(
        err.to_string().contains("past the total of 64 GiB"),
        "{err}"
    );
    let err = bad("limit: 0.5", "limit: 1.0");
    names(&err, "pools.kv.limit", 7);
}

#[test]
fn a_zero_total_is_refused() {
    for zero in ["total: 0", "total: 0GiB", "total: 0.0 MiB"] {
        let err = bad("total: 64GiB", zero);
        assert!(
            matches!(
                &err,
                ProfileError::InvalidLayout {
                    cause: BuildError::ZeroTotal,
                    ..
                }
            ),
            "{zero}: {err}"
        );
        names(&err, "total", 3);
    }
}

#[test]
fn other_bad_values_are_refused_by_key_and_line() {
    let err = bad("total: 64GiB", "total: 0.5");
    assert!(matches!(
        &err,
        ProfileError::InvalidSize {
            cause: SizeError::ShareNotAllowed { .. },
            ..
        }
    ));
    names(&err, "total", 3);
    let err = bad("limit: 0.5", "limit: 1.5");
    assert!(matches!(
        &err,
        ProfileError::InvalidSize {
            cause: SizeError::ShareOutOfRange { .. },
            ..
        }
    ));
    names(&err, "pools.weights.limit", 6);
    let err = bad("limit: 12GiB", "limit: [12GiB]");
    assert!(matches!(
        &err,
        ProfileError::WrongType {
            found: "a list",
            ..
        }
    ));
    names(&err, "pools.kv.limit", 7);
    names(&bad("limit: 12GiB", "limit: true"), "pools.kv.limit", 7);
    names(&bad("policy: tiered", "policy: 3"), "pools.kv.policy", 7);
    names(&bad("  kv: ", "  Kv: "), "pools.Kv", 7);
    names(&bad("name: workstation", "name: [a]"), "name", 2);
    let err = bad(
        "priority: [scratch, weights,",
        "priority: [scratch, weight,",
    );
    assert!(matches!(
        &err,
        ProfileError::InvalidLayout { cause: BuildError::UnknownPriorityPool { name, .. }, .. }
            if name == "weight"
    ));
    names(&err, "priority[1]", 4);
    names(
        &bad("priority: [scratch", "priority: [kv, kv"),
        "priority[1]",
        4,
    );
    names(
        &bad(
            "priority: [scratch, weights, kv, documents]",
            "priority: kv",
        ),
        "priority",
        4,
    );
    let err = Profile::from_yaml_str("total: 1GiB\npools:\n  7: { policy: tiered, limit: 1 }\n")
        .expect_err("a number is not a pool name");
    names(&err, "pools.7", 3);
    let err = Profile::from_yaml_str("total: 1GiB\npools: 3\n").expect_err("not a mapping");
    names(&err, "pools", 2);
}

#[test]
fn missing_keys_are_refused() {
    let err = bad("total: 64GiB\n", "");
    assert!(matches!(&err, ProfileError::MissingKey { key, .. } if key == "total"));
    let err = bad("policy: tiered,       ", "");
    assert!(matches!(&err, ProfileError::MissingKey { key, line: 7 } if key == "pools.kv.policy"));
    let err = bad("    limit: 8589934592\n", "");
    assert!(matches!(&err, ProfileError::MissingKey { key, .. } if key == "pools.reserve.limit"));
    let err = Profile::from_yaml_str("total: 1GiB\n").expect_err("no pools");
    assert!(matches!(&err, ProfileError::MissingKey { key, .. } if key == "pools"));
    let err = Profile::from_yaml_str("total: 1GiB\npools: {}\n").expect_err("no pools");
    assert!(matches!(
        &err,
        ProfileError::InvalidLayout {
            cause: BuildError::NoPools,
            ..
        }
    ));
    let err = Profile::from_yaml_str("").expect_err("empty");
    assert!(matches!(&err, ProfileError::MissingKey { key, .. } if key == "total"));
}

#[test]
fn broken_yaml_is_refused_with_its_line() {
    let err = bad(
        "  kv:        { policy: tiered,       limit: 12GiB }",
        "  kv: { policy: tiered",
    );
    assert!(
        matches!(&err, ProfileError::Yaml { line: Some(_), .. }),
        "{err}"
    );
    let err = bad("  scratch:", "  kv:");
    assert!(
        matches!(&err, ProfileError::Yaml { line: Some(8), .. }),
        "duplicate key: {err}"
    );
    assert!(err.to_string().contains("duplicate"), "{err}");
    let err = Profile::from_yaml_str("- 1\n- 2\n").expect_err("a list");
    assert!(matches!(&err, ProfileError::WrongType { key, .. } if key == "(document)"));
    let huge = format!("{GOOD}{}", "#".repeat(MAX_PROFILE_BYTES));
    assert!(matches!(
        Profile::from_yaml_str(&huge),
        Err(ProfileError::TooLarge { .. })
    ));
    let deep = format!(
        "total: 1GiB\npools: {}{}\n",
        "[".repeat(100),
        "]".repeat(100)
    );
    assert!(Profile::from_yaml_str(&deep).is_err());
}

#[cfg(unix)]
#[test]
fn finding6_a_profile_file_is_read_only_up_to_the_cap() {
    // An endless file: reading it whole never ends, or ends out of memory.
    let err = Profile::from_yaml_file(std::path::Path::new("/dev/zero")).unwrap_err();
    assert!(
        matches!(
            &err,
            ProfileFileError::Invalid {
                cause: ProfileError::TooLarge { len, max: MAX_PROFILE_BYTES },
                ..
            } if *len == MAX_PROFILE_BYTES + 1
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("/dev/zero"), "{err}");
}

#[test]
fn profile_files_are_read_and_their_errors_say_why_once() {
    let dir = std::env::temp_dir().join(format!("llmem-profile-file-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("p.yaml");
    std::fs::write(&path, GOOD).unwrap();
    assert_eq!(
        Profile::from_yaml_file(&path).unwrap(),
        Profile::from_yaml_str(GOOD).unwrap()
    );
    std::fs::write(&path, b"name: x\n\xff\xfe").unwrap();
    let not_text = Profile::from_yaml_file(&path).unwrap_err();
    assert!(not_text.to_string().contains("not UTF-8"), "{not_text}");
    // A directory and a missing file are read errors that carry the OS's words once.
    for missing in [dir.clone(), dir.join("absent.yaml")] {
        let err = Profile::from_yaml_file(&missing).unwrap_err();
        assert!(matches!(err, ProfileFileError::Read { .. }), "{err:?}");
        assert!(std::error::Error::source(&err).is_none(), "{err:?}");
        assert!(err.to_string().contains("os error"), "{err}");
    }
    // Causes are shown in the message, not returned again as a source.
    let bad_size = Profile::from_yaml_str(&GOOD.replace("limit: 12GiB", "limit: -1")).unwrap_err();
    assert!(
        std::error::Error::source(&bad_size).is_none(),
        "{bad_size:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
