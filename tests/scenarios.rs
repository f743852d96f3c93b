//! Every scenario shipped in `examples/scenarios/` run through the
//! `voice_agent` example with `--json` (offline demo model), asserting its key
//! lines and the committed history; and the scenario file's errors (exit 2,
//! naming the file and the key).
//!
//! Scenario times are wall-clock, so the assertions are about order and
//! content, never exact milliseconds. `cargo test` builds the examples before
//! running tests; these tests run the built binary.

#[path = "support/bin.rs"]
mod bin;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use serde_json::Value;

/// Only turns a hang into a failure.
const GUARD: Duration = Duration::from_secs(180);

fn scenario(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples/scenarios")
        .join(format!("{name}.json"))
}

async fn run(args: &[&std::ffi::OsStr]) -> Output {
    bin::output_within(bin::command("voice_agent", args), GUARD).await
}

/// The run's JSON lines, checked for the common contract: exit 0, nothing on
/// stderr, every line an object with `t_ms` (non-decreasing) and `type`, the
/// last one `history`.
struct Run {
    lines: Vec<Value>,
}

async fn run_json(name: &str) -> Run {
    let path = scenario(name);
    let out = run(&["--scenario".as_ref(), path.as_os_str(), "--json".as_ref()]).await;
    let stdout = String::from_utf8(out.stdout).expect("utf-8");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{name}: {stderr}\n{stdout}");
    assert!(stderr.is_empty(), "{name}: stderr {stderr}");
    let lines: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{name}: not JSON ({e}): {l}")))
        .collect();
    let mut last_t = 0.0;
    for line in &lines {
        let t = line["t_ms"]
            .as_f64()
            .unwrap_or_else(|| panic!("{name}: no t_ms in {line}"));
        assert!(t >= last_t, "{name}: t_ms goes back at {line}");
        last_t = t;
        assert!(line["type"].is_string(), "{name}: no type in {line}");
    }
    assert_eq!(
        lines.last().map(|l| l["type"].as_str()),
        Some(Some("history")),
        "{name}: the last line is the history"
    );
    Run { lines }
}

impl Run {
    fn types(&self) -> Vec<&str> {
        self.lines
            .iter()
            .filter_map(|l| l["type"].as_str())
            .collect()
    }

    /// Index of the first line of `kind` matching `pred`.
    fn find(&self, kind: &str, pred: impl Fn(&Value) -> bool) -> Option<usize> {
        self.lines.iter().position(|l| l["type"] == kind && pred(l))
    }

    fn first(&self, kind: &str) -> usize {
        self.find(kind, |_| true)
            .unwrap_or_else(|| panic!("no {kind} line in {:?}", self.types()))
    }

    fn count(&self, kind: &str) -> usize {
        self.lines.iter().filter(|l| l["type"] == kind).count()
    }

    fn of_turn(&self, kind: &str, turn: u64) -> Vec<&Value> {
        self.lines
            .iter()
            .filter(|l| l["type"] == kind && l["turn"] == turn)
            .collect()
    }

    /// The turn's text, from its `speakable` lines.
    fn spoken(&self, turn: u64) -> String {
        self.of_turn("speakable", turn)
            .iter()
            .map(|l| l["text"].as_str().unwrap_or(""))
            .collect()
    }

    /// Its `played` positions, in order.
    fn played(&self, turn: u64) -> Vec<u64> {
        self.of_turn("played", turn)
            .iter()
            .map(|l| l["chars"].as_u64().unwrap())
            .collect()
    }

    fn turns_started(&self) -> Vec<u64> {
        self.lines
            .iter()
            .filter(|l| l["type"] == "turn_started")
            .map(|l| l["turn"].as_u64().unwrap())
            .collect()
    }

    /// The committed messages: role, text, interrupted.
    fn history(&self) -> Vec<(String, String, bool)> {
        self.lines.last().unwrap()["messages"]
            .as_array()
            .expect("messages")
            .iter()
            .map(|m| {
                (
                    m["role"].as_str().unwrap().to_string(),
                    m["text"].as_str().unwrap().to_string(),
                    m["interrupted"].as_bool().unwrap(),
                )
            })
            .collect()
    }
}

fn msg(role: &str, text: &str, interrupted: bool) -> (String, String, bool) {
    (role.into(), text.into(), interrupted)
}

fn chars(s: &str) -> u64 {
    s.chars().count() as u64
}

/// A turn spoken in full: progress strictly increasing up to its length.
fn assert_played_in_full(run: &Run, turn: u64) {
    let text = run.spoken(turn);
    let played = run.played(turn);
    assert!(
        played.windows(2).all(|w| w[0] < w[1]),
        "nothing repeated: {played:?}"
    );
    assert_eq!(played.last(), Some(&chars(&text)), "nothing skipped");
}

const PARIS: &str = "Paris is the capital of France, on the river Seine. It is known for the \
                     Eiffel Tower, the Louvre and its cafés, and about two million people live \
                     in the city itself.";

#[tokio::test]
async fn cough_pauses_and_resumes_without_a_cut() {
    let run = run_json("cough").await;
    let (paused, resumed) = (run.first("paused"), run.first("resumed"));
    assert!(paused < resumed, "{:?}", run.types());
    assert_eq!((run.count("paused"), run.count("resumed")), (1, 1));
    assert_eq!(run.count("cut"), 0);
    assert_eq!(run.count("backchannel"), 0);
    assert_eq!(run.turns_started(), [1], "the cough is not a turn");
    assert_eq!(run.count("user"), 1, "no words in a cough");
    // Progress runs on across the pause: nothing repeated, nothing skipped.
    assert_played_in_full(&run, 1);
    assert_eq!(run.spoken(1), PARIS);
    assert_eq!(
        run.history(),
        [
            msg("user", "Tell me about Paris.", false),
            msg("assistant", PARIS, false)
        ]
    );
}

#[tokio::test]
async fn backchannel_is_neither_a_turn_nor_a_cut() {
    let run = run_json("backchannel").await;
    let paused = run.first("paused");
    let backchannel = run.first("backchannel");
    let resumed = run.first("resumed");
    assert!(
        paused < backchannel && backchannel < resumed,
        "{:?}",
        run.types()
    );
    assert_eq!(run.lines[backchannel]["text"], "Uh-huh.");
    assert_eq!(run.find("user", |l| l["text"] == "Uh-huh."), None);
    assert_eq!(run.count("cut"), 0);
    assert_eq!(run.turns_started(), [1]);
    assert_played_in_full(&run, 1);
    assert_eq!(
        run.history(),
        [
            msg("user", "Tell me about Paris.", false),
            msg("assistant", PARIS, false)
        ]
    );
}

#[tokio::test]
async fn real_interruption_cuts_and_the_final_becomes_a_turn() {
    let run = run_json("interruption").await;
    let paused = run.first("paused");
    let interim = run
        .find("user", |l| l["text"] == "wait stop" && l["final"] == false)
        .expect("the interim");
    let cut = run.first("cut");
    let final_ = run
        .find("user", |l| {
            l["final"] == true && l["text"] == "Wait, stop. What about tomorrow?"
        })
        .expect("the final");
    let started = run
        .find("turn_started", |l| l["turn"] == 2)
        .expect("turn 2");
    assert!(
        paused < interim && interim < cut && cut < final_ && final_ < started,
        "{:?}",
        run.types()
    );
    assert_eq!(
        run.count("resumed"),
        0,
        "a confirmed interruption never resumes"
    );
    let heard = run.lines[cut]["heard_chars"].as_u64().unwrap();
    let played_before: Vec<u64> = run.lines[..cut]
        .iter()
        .filter(|l| l["type"] == "played" && l["turn"] == 1)
        .map(|l| l["chars"].as_u64().unwrap())
        .collect();
    assert_eq!(
        played_before.last(),
        Some(&heard),
        "cut where playback stood"
    );
    assert!(
        run.lines[cut..]
            .iter()
            .all(|l| !(l["turn"] == 1 && (l["type"] == "played" || l["type"] == "speakable"))),
        "nothing of turn 1 after the cut"
    );
    assert!(heard > 0 && heard < chars(PARIS));
    let trimmed: String = PARIS.chars().take(heard as usize).collect();
    assert_played_in_full(&run, 2);
    assert_eq!(
        run.history(),
        [
            msg("user", "Tell me about Paris.", false),
            msg("assistant", &trimmed, true),
            msg("user", "Wait, stop. What about tomorrow?", false),
            msg("assistant", &run.spoken(2), false),
        ]
    );
}

#[tokio::test]
async fn preemptive_hit_releases_the_reply_at_the_final() {
    let run = run_json("preemptive_hit").await;
    let final_ = run.find("user", |l| l["final"] == true).expect("final");
    let hit = run
        .find("speculation", |l| l["outcome"] == "hit")
        .expect("a hit");
    let started = run.first("turn_started");
    let speakable = run.first("speakable");
    assert!(
        final_ < hit && hit < started && started < speakable,
        "{:?}",
        run.types()
    );
    assert_eq!(run.count("speculation"), 1, "one request for the utterance");
    assert!(
        run.lines
            .iter()
            .filter(|l| l["type"] == "usage")
            .all(|l| l["speculative"] == false),
        "a promoted speculation is an ordinary turn's cost"
    );
    let latency = run.lines[speakable]["t_ms"].as_f64().unwrap()
        - run.lines[final_]["t_ms"].as_f64().unwrap();
    eprintln!("preemptive hit: final transcript → first speakable {latency:.1} ms");
    let turn = run.lines[started]["turn"].as_u64().unwrap();
    assert_eq!(run.spoken(turn), "The capital of France is Paris.");
    assert_played_in_full(&run, turn);
    // The turn's latency line: every interval, adding up to end to end.
    let report = &run.of_turn("turn_latency", turn)[0];
    assert_eq!(report["end"], "stop", "{report}");
    let parts: f64 = [
        "speech_end_to_final_ms",
        "final_to_turn_start_ms",
        "turn_start_to_first_token_ms",
        "first_token_to_speakable_ms",
        "speakable_to_heard_ms",
    ]
    .iter()
    .map(|k| {
        report[*k]
            .as_f64()
            .unwrap_or_else(|| panic!("{k}: {report}"))
    })
    .sum();
    let total = report["end_to_end_ms"].as_f64().unwrap();
    assert!((parts - total).abs() < 0.01, "{report}");
    assert_eq!(
        run.history(),
        [
            msg("user", "What's the capital of France?", false),
            msg("assistant", "The capital of France is Paris.", false),
        ]
    );
}

#[tokio::test]
async fn preemptive_miss_is_discarded_unheard_and_its_cost_reported() {
    let run = run_json("preemptive_miss").await;
    let final_ = run.find("user", |l| l["final"] == true).expect("final");
    let miss = run
        .find("speculation", |l| l["outcome"] == "miss")
        .expect("a miss");
    let cost = run
        .find("usage", |l| l["speculative"] == true)
        .expect("the discarded speculation's usage");
    let started = run.first("turn_started");
    assert!(
        final_ < miss && miss < cost && cost < started,
        "{:?}",
        run.types()
    );
    assert!(run.lines[cost]["prompt_tokens"].as_u64().unwrap() > 0);
    assert_ne!(
        run.lines[cost]["turn"], run.lines[started]["turn"],
        "the speculation was its own (discarded) turn"
    );
    assert_eq!(run.turns_started().len(), 1, "only the real turn started");
    let turn = run.lines[started]["turn"].as_u64().unwrap();
    assert_eq!(run.spoken(turn), "The capital of Italy is Rome.");
    assert!(
        !run.lines
            .iter()
            .any(|l| l["text"].as_str().is_some_and(|t| t.contains("Madrid"))),
        "not a word of the discarded speculation"
    );
    assert_eq!(
        run.history(),
        [
            msg("user", "What's the capital of Italy?", false),
            msg("assistant", "The capital of Italy is Rome.", false),
        ]
    );
}

#[tokio::test]
async fn tool_call_turn_speaks_both_rounds() {
    let run = run_json("tool_call").await;
    assert_eq!(run.turns_started(), [1]);
    assert_eq!(
        run.of_turn("usage", 1).len(),
        2,
        "two requests: the call, the answer"
    );
    assert_eq!(
        run.of_turn("turn_finished", 1)
            .iter()
            .map(|l| l["reason"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["stop"]
    );
    let spoken = run.spoken(1);
    assert!(
        spoken.starts_with("Let me check the weather in Paris. It's 18 degrees"),
        "{spoken}"
    );
    assert_played_in_full(&run, 1);
    let history = run.history();
    assert_eq!(history.len(), 3, "{history:?}");
    assert_eq!(
        history[1],
        msg("assistant", "Let me check the weather in Paris. ", false)
    );
    assert!(history[2].1.starts_with("It's 18 degrees"));
    assert_eq!(format!("{}{}", history[1].1, history[2].1), spoken);
}

#[tokio::test]
async fn the_default_demo_shows_every_behaviour() {
    let out = run(&["--json".as_ref()]).await;
    assert_eq!(out.status.code(), Some(0));
    let lines: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let run = Run { lines };
    let types = run.types();
    for kind in [
        "paused",
        "resumed",
        "backchannel",
        "cut",
        "speculation",
        "turn_latency",
        "history",
    ] {
        assert!(types.contains(&kind), "no {kind}: {types:?}");
    }
    assert!(run.count("resumed") >= 2, "the cough and the backchannel");
    assert!(run.find("speculation", |l| l["outcome"] == "hit").is_some());
    assert_eq!(run.of_turn("usage", 1).len(), 2, "turn 1 calls a tool");
    assert!(run.history().iter().any(|(_, _, interrupted)| *interrupted));
}

#[tokio::test]
async fn scenario_errors_name_the_file_and_the_key_and_exit_2() {
    let dir = std::env::temp_dir().join(format!("colloquy-scenarios-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cases = [
        (
            "unknown_key",
            r#"{"events": [], "speed": 2}"#,
            "unknown key \"speed\"",
        ),
        (
            "unknown_event_key",
            r#"{"events": [{"at_ms": 0, "said": "hi"}]}"#,
            "unknown key \"said\" in events[0]",
        ),
        (
            "unknown_interruption_key",
            r#"{"interruption": {"min_word": 2}}"#,
            "unknown key \"min_word\" in \"interruption\"",
        ),
        (
            "bad_mode",
            r#"{"interruption": {"mode": "polite"}}"#,
            "\"interruption.mode\" must be \"immediate\" or \"confirmed\"",
        ),
        (
            "malformed",
            r#"{"events": [{"at_ms": 0,"#,
            "EOF while parsing",
        ),
        ("not_an_object", "[1, 2]", "must be a JSON object"),
        (
            "two_actions",
            r#"{"events": [{"at_ms": 0, "interim": "a", "final": "a"}]}"#,
            "events[0]: one action per event",
        ),
        (
            "no_action",
            r#"{"events": [{"at_ms": 5}]}"#,
            "events[0] needs one of",
        ),
        (
            "bad_type",
            r#"{"events": [{"at_ms": "soon", "end": true}]}"#,
            "\"events[0].at_ms\"",
        ),
        (
            "bad_rate",
            r#"{"tts_chars_per_s": -1}"#,
            "\"tts_chars_per_s\" must be a positive number",
        ),
    ];
    for (name, text, expected) in cases {
        let path = dir.join(format!("{name}.json"));
        std::fs::write(&path, text).unwrap();
        let out = run(&["--scenario".as_ref(), path.as_os_str(), "--json".as_ref()]).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name}: {stderr}");
        assert!(out.stdout.is_empty(), "{name}: nothing on stdout");
        assert!(
            stderr.starts_with("error: scenario ") && stderr.contains(&format!("{name}.json")),
            "{name}: names the file: {stderr}"
        );
        assert!(stderr.contains(expected), "{name}: {stderr}");
    }
    let missing = dir.join("missing.json");
    let out = run(&["--scenario".as_ref(), missing.as_os_str()]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read scenario"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn an_end_event_ends_the_run_at_its_time() {
    let dir = std::env::temp_dir().join(format!("colloquy-end-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("end.json");
    std::fs::write(
        &path,
        r#"{"events": [{"at_ms": 0, "final": "Tell me about Paris."}, {"at_ms": 1500, "end": true}]}"#,
    )
    .unwrap();
    let out = run(&["--scenario".as_ref(), path.as_os_str(), "--json".as_ref()]).await;
    assert_eq!(out.status.code(), Some(0));
    let lines: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let last = lines.last().unwrap();
    assert_eq!(last["type"], "history");
    // The reply takes about 10 s to speak; the run ended at 1.5 s.
    let played = lines
        .iter()
        .filter(|l| l["type"] == "played")
        .filter_map(|l| l["chars"].as_u64())
        .max()
        .unwrap_or(0);
    assert!(played < chars(PARIS), "ended before the reply was spoken");
    assert!(
        !lines.iter().any(|l| l["type"] == "cut"),
        "stopping is not an interruption"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
