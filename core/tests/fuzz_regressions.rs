//! Replays every input saved under `fuzz/regressions/<target>/` through the
//! code path of that fuzz target (`fuzz/common/checks.rs`, shared with the
//! targets), checking that it does not panic and that its outcome is the one
//! documented beside it in `<input>.expected`.
//!
//! An input with a `<input>.pending` file is a finding whose fix has not
//! landed: the first test skips it, and `pending_findings` (ignored) replays
//! it strictly. Delete the `.pending` file with the fix. See
//! fuzz/regressions/README.md.

#[path = "../../fuzz/common/checks.rs"]
mod checks;

use std::fs;
use std::path::{Path, PathBuf};

fn strict_op_parse(data: &[u8]) -> String {
    checks::op_parse_with(data, false)
}

fn strict_payload(data: &[u8]) -> String {
    checks::payload_with(data, false)
}

/// A target's check: panics on a broken property, else returns the outcome.
type Check = fn(&[u8]) -> String;

/// Every fuzz target: each one's whole path runs without the fuzz crate's
/// dependencies.
const TARGETS: &[(&str, Check)] = &[
    ("op_parse", strict_op_parse),
    ("http_head", checks::http_head),
    ("resp_decode", checks::resp_decode),
    ("payload", strict_payload),
    ("payload_key", checks::payload_key),
    ("ws_read", checks::ws_read),
];

fn regressions() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/regressions")
}

/// The saved inputs of `target` with their expected outcome and whether they
/// are pending.
fn inputs(target: &str) -> Vec<(PathBuf, String, bool)> {
    let dir = regressions().join(target);
    let Ok(read) = fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = read
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file() && p.extension().is_none())
        .collect();
    found.sort();
    found
        .into_iter()
        .map(|input| {
            let expected_path = input.with_extension("expected");
            let expected = fs::read_to_string(&expected_path)
                .unwrap_or_else(|_| panic!("{} has no .expected file", input.display()));
            let pending = input.with_extension("pending").exists();
            (input, expected.trim().to_owned(), pending)
        })
        .collect()
}

fn replay(target: &str, check: Check, input: &Path, expected: &str) {
    let data = fs::read(input).unwrap();
    let outcome = check(&data);
    assert_eq!(outcome, expected, "{target}: {}", input.display());
}

#[test]
fn saved_crashing_inputs_behave_as_documented() {
    let mut replayed = 0;
    for &(target, check) in TARGETS {
        for (input, expected, pending) in inputs(target) {
            if pending {
                eprintln!("skipping pending {}", input.display());
                continue;
            }
            replay(target, check, &input, &expected);
            replayed += 1;
        }
    }
    assert!(
        replayed > 0,
        "no regression inputs found under {}",
        regressions().display()
    );
}

#[test]
fn every_folder_of_inputs_belongs_to_a_replayed_target() {
    for entry in fs::read_dir(regressions()).unwrap() {
        let path = entry.unwrap().path();
        if !path.is_dir() {
            continue;
        }
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            TARGETS.iter().any(|&(target, _)| target == name),
            "fuzz/regressions/{name} is not replayed by any target"
        );
        // Every input has its outcome documented (`inputs` panics otherwise).
        inputs(&name);
    }
}

/// `ws_read` outcomes of hand-made inputs, so the replayed check is seen to
/// tell the cases apart.
#[test]
fn ws_read_outcomes_name_what_ended_the_connection() {
    let masked_ping = [0x89, 0x80, 1, 2, 3, 4];
    assert_eq!(checks::ws_read(&masked_ping), "0 messages, eof with 0 bytes held");
    assert_eq!(checks::ws_read(&[0x89, 0x80, 1]), "0 messages, eof with 3 bytes held");
    assert_eq!(checks::ws_read(&[0xC1, 0x80]), "0 messages, refuse 1002");
    assert_eq!(
        checks::ws_read(&[0x81, 0x7F, 0x80, 0, 0, 0, 0, 0, 0, 0]),
        "0 messages, refuse 1009"
    );
    assert_eq!(checks::ws_read(&[0x88, 0x80, 0, 0, 0, 0]), "0 messages, echo 1000");
    assert_eq!(checks::ws_read(&[0x81, 0x01, b'x']), "0 messages, fail 1002");
}

/// Findings reported and not fixed yet: reports which still fail and which
/// pass now (delete their `.pending`). A stack overflow is not a panic and
/// aborts the run, so `resp_decode` inputs go last:
/// `cargo test -p feedgate-core --test fuzz_regressions -- --ignored --nocapture`.
#[test]
#[ignore = "findings whose fix has not landed (fuzz/regressions/*/*.pending)"]
fn pending_findings() {
    let mut order: Vec<(&str, Check)> = TARGETS.to_vec();
    order.sort_by_key(|&(target, _)| target == "resp_decode");
    let mut failing = Vec::new();
    for (target, check) in order {
        for (input, expected, pending) in inputs(target) {
            if !pending {
                continue;
            }
            eprintln!("replaying pending {}", input.display());
            let ok = std::panic::catch_unwind(|| replay(target, check, &input, &expected)).is_ok();
            if ok {
                eprintln!("  passes now: delete {}", input.with_extension("pending").display());
            } else {
                failing.push(input.display().to_string());
            }
        }
    }
    assert!(failing.is_empty(), "pending findings still failing: {failing:#?}");
}
