//! The conditions a benchmark ran under, printed in its header and with each figure: the
//! databases' durability settings (queried from the servers), cores, the measured process and
//! the machine load, so that every figure says how it was obtained.
#![allow(dead_code)]

use m365bot::db::{Backend, Db};
use sqlx::Row;

/// `/proc/loadavg`'s 1, 5 and 15 minute averages (`?` where it cannot be read).
pub fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|_| "?".to_owned())
}

/// Peak resident memory (`VmHWM`) of process `pid`, in MiB.
pub fn peak_rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// Peak resident memory of this process, in MiB.
pub fn own_peak_rss_mib() -> Option<f64> {
    peak_rss_mib(std::process::id())
}

/// Resets this process's peak resident memory to its current size (Linux: `5` into
/// `/proc/self/clear_refs`), so that the next [`own_peak_rss_mib`] covers only what follows.
pub fn reset_own_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// One line naming the durability settings of `db`, read from the server or file.
pub async fn durability(db: &Db) -> String {
    match db.backend {
        Backend::Postgres => {
            let mut parts = Vec::new();
            for setting in [
                "server_version",
                "fsync",
                "synchronous_commit",
                "full_page_writes",
                "wal_sync_method",
            ] {
                let value = sqlx::query(&format!("SHOW {setting}"))
                    .fetch_one(&db.pool)
                    .await
                    .and_then(|row| row.try_get::<String, _>(0))
                    .unwrap_or_else(|e| format!("? ({e})"));
                parts.push(format!("{setting}={value}"));
            }
            format!("PostgreSQL {}", parts.join(" "))
        }
        Backend::Sqlite => {
            let read = |pragma: &'static str| async move {
                let row = sqlx::query(&format!("PRAGMA {pragma}"))
                    .fetch_one(&db.pool)
                    .await;
                match row {
                    Ok(row) => row
                        .try_get::<String, _>(0)
                        .or_else(|_| row.try_get::<i64, _>(0).map(|n| n.to_string()))
                        .unwrap_or_else(|_| "?".to_owned()),
                    Err(e) => format!("? ({e})"),
                }
            };
            let synchronous = match read("synchronous").await.as_str() {
                "0" => "OFF".to_owned(),
                "1" => "NORMAL".to_owned(),
                "2" => "FULL".to_owned(),
                "3" => "EXTRA".to_owned(),
                other => other.to_owned(),
            };
            format!(
                "SQLite journal_mode={} synchronous={synchronous} (WAL+NORMAL: every commit \
                 survives a crash of the process; a power loss may undo the last commits)",
                read("journal_mode").await
            )
        }
    }
}

/// Prints the header: what runs, cores, the measured process, load, and each database's
/// durability settings.
pub async fn print_header(bench: &str, measured: &str, databases: &[&Db]) {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!("== {bench}");
    println!(
        "   at {} UTC; {cores} cores; release build: {}",
        chrono::Utc::now().format("%Y-%m-%d %H:%M:%S"),
        !cfg!(debug_assertions)
    );
    println!("   measured: {measured} (pid {})", std::process::id());
    println!("   load (1/5/15 min): {}", load());
    for db in databases {
        println!("   {}", durability(db).await);
    }
}

/// The median of `values` (sorted here), and their spread (min and max).
pub fn median_and_spread(values: &mut [f64]) -> (f64, f64, f64) {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n == 0 {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    let median = if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    };
    (median, values[0], values[n - 1])
}

/// The `p`th percentile (0-100, nearest rank) of `sorted` values.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}
