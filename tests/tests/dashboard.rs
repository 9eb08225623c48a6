//! The dashboard (`/ui`, issue 20) in a real browser: headless Chromium loads the page from a
//! node of a three-node cluster, runs its script, and the DOM it renders is checked against
//! each node's own `/stats`; then a node is killed and the page must show it unreachable,
//! with none of its old numbers.
//!
//! Chromium comes from Debian's `chromium` package (`.ci/run` installs it). Where it is missing
//! the test says so and passes, except under CI (`CI` set), where it fails.

#![allow(clippy::unwrap_used)] // A failed unwrap in a test is that test failing.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tests::event::unique;
use tests::{event, ClusterOptions, EventBuilder, TestCluster};

fn chromium() -> Option<PathBuf> {
    let candidates = ["chromium", "chromium-browser", "google-chrome"];
    std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .flat_map(|dir| candidates.iter().map(move |c| dir.join(c)))
            .find(|p| p.is_file())
    })
}

/// The DOM after the page ran its script for a few seconds of virtual time.
async fn rendered(browser: &PathBuf, url: &str, profile: &std::path::Path) -> String {
    let mut cmd = tokio::process::Command::new(browser);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--virtual-time-budget=4000",
        "--dump-dom",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .arg(url)
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(90), cmd.output())
        .await
        .expect("chromium finished within 90 s")
        .expect("chromium ran");
    let dom = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        dom.contains("data-polls"),
        "chromium gave no DOM ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    dom
}

/// The `<tr ...>` element of node `id` in the members table, through its `</tr>`.
fn member_row(dom: &str, id: u64) -> String {
    let start = dom
        .find(&format!("<tr data-node-id=\"{id}\""))
        .unwrap_or_else(|| panic!("no row for node {id} in:\n{dom}"));
    let end = dom[start..].find("</tr>").unwrap() + start;
    dom[start..end].to_string()
}

/// The text of the cell `data-field="field"` in `row`.
fn field(row: &str, field: &str) -> Option<String> {
    let at = row.find(&format!("data-field=\"{field}\""))?;
    let open = row[at..].find('>')? + at + 1;
    let close = row[open..].find("</td>")? + open;
    Some(row[open..close].to_string())
}

fn number(text: &str) -> u64 {
    text.replace(',', "")
        .parse()
        .unwrap_or_else(|_| panic!("not a number: {text:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_each_node_as_its_stats_say_and_a_dead_node_as_unreachable() {
    let Some(browser) = chromium() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "chromium is required under CI (apt-get install chromium)"
        );
        eprintln!("SKIPPED: no chromium on PATH (apt-get install chromium)");
        return;
    };
    let mut cluster = TestCluster::start_with(ClusterOptions::new(3)).await;
    let topic = unique("ui");
    let source = unique("ui-src");
    // A producer with a gap (seq 1, then 5) so the producers table has something to say.
    for (seq, id) in [(1, "a"), (5, "b"), (6, "c")] {
        let e = EventBuilder::new(&topic, id)
            .source(&source)
            .seq(seq)
            .build();
        cluster
            .publish_until_ok(&[1, 2, 3], &e, Duration::from_secs(10))
            .await;
    }
    cluster
        .publish_until_ok(&[1, 2, 3], &event(&topic, "a"), Duration::from_secs(10))
        .await;
    cluster
        .wait_converged(&[1, 2, 3], Duration::from_secs(30))
        .await;
    let profile = tempfile::tempdir().unwrap();

    let page = format!("{}/ui", cluster.url(1));
    let dom = rendered(&browser, &page, profile.path()).await;
    assert!(
        dom.contains("data-state=\"up\""),
        "status pill not live:\n{dom}"
    );
    for id in [1, 2, 3] {
        let stats = cluster.stats(id).await;
        let row = member_row(&dom, id);
        assert!(
            row.contains("data-state=\"up\""),
            "node {id} not shown up: {row}"
        );
        assert_eq!(
            field(&row, "role").as_deref(),
            Some(stats.role.as_str()),
            "node {id}: {row}"
        );
        assert_eq!(
            number(&field(&row, "stored").unwrap()),
            stats.unique_processed,
            "node {id}"
        );
        assert_eq!(
            number(&field(&row, "applied").unwrap()),
            stats.raft.applied_index.unwrap(),
            "node {id}"
        );
        assert_eq!(
            number(&field(&row, "term").unwrap()),
            stats.raft.term,
            "node {id}"
        );
    }
    assert!(
        dom.contains(&format!("data-topic=\"{topic}\"")),
        "topic missing"
    );
    let at = dom
        .find(&format!("data-source=\"{source}\""))
        .expect("producer missing");
    let producer = &dom[at..at + dom[at..].find("</tr>").unwrap()];
    assert_eq!(field(producer, "gaps").as_deref(), Some("3"), "{producer}");
    if let Some(dir) = std::env::var_os("UI_SCREENSHOT_DIR") {
        screenshot(
            &browser,
            &page,
            profile.path(),
            &PathBuf::from(dir).join("dashboard.png"),
        )
        .await;
    }

    // Kill a node that is not the one serving the page (the leader if node 1 does not lead).
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
    let victim = if leader == 1 { 3 } else { leader };
    cluster.kill(victim);
    cluster.wait_for_leader(Duration::from_secs(20)).await;
    let dom = rendered(&browser, &page, profile.path()).await;
    let row = member_row(&dom, victim);
    assert!(
        row.contains("data-state=\"unreachable\""),
        "killed node {victim} shown as: {row}"
    );
    for f in ["stored", "applied", "term", "role"] {
        assert!(
            field(&row, f).is_none(),
            "killed node shows a stale {f}: {row}"
        );
    }
    for id in [1, 2, 3].into_iter().filter(|&i| i != victim) {
        assert!(
            member_row(&dom, id).contains("data-state=\"up\""),
            "node {id}"
        );
    }
}

async fn screenshot(browser: &PathBuf, url: &str, profile: &std::path::Path, to: &std::path::Path) {
    let status = tokio::process::Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--window-size=1280,900",
            "--virtual-time-budget=4000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("--screenshot={}", to.display()))
        .arg(url)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await
        .unwrap();
    assert!(status.success(), "screenshot failed");
}
