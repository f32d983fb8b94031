//! Paced rule changes through the admin API, as a sandbox platform makes them: creates and
//! deletes in turn at a steady rate, from a pool of concurrent writers. scripts/bench_churn.py
//! runs it next to examples/grpc_load to measure decisions while rules churn; it costs a few
//! microseconds of CPU per write, so the writes' load on the machine is the server's own.
//!
//! usage: admin_churn ADMIN_ADDRESS API_KEY RATE WRITERS RUNTIMES TAG POOL_FILE
//!
//! Write n is due at start + n / RATE (no more than WRITERS in flight; a write that finds them
//! all busy waits for one and then goes). Even writes create a rule for a host of their own
//! (`churn{n}-{TAG}.example.com`, path /v1/*, runtime rt-(1 + n % (RUNTIMES - 1)), credential
//! `openai-api-key` as `Authorization: Bearer ...`); odd writes delete the oldest rule of the
//! pool (POOL_FILE: one rule id per line, to start with), which creates refill. It runs until
//! its standard input ends, then waits for the writes in flight and prints one JSON line:
//! `create` and `delete` (each write's seconds, from sending the request to reading the whole
//! answer), `errors`, `first_error`, `seconds` (from the first write to the last answer) and
//! `pool` (the ids left to delete, in order).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;
use tokio::sync::Semaphore;

const SECRET_NAME: &str = "openai-api-key";

#[derive(Default)]
struct Record {
    create: Vec<f64>,
    delete: Vec<f64>,
    errors: u64,
    first_error: Option<String>,
}

impl Record {
    fn failed(&mut self, what: String) {
        self.errors += 1;
        self.first_error.get_or_insert(what);
    }
}

/// What every write shares: the HTTP client, the server, the pool of rules to delete.
struct Writer {
    client: reqwest::Client,
    base: String,
    key: String,
    runtimes: u64,
    tag: String,
    pool: Mutex<VecDeque<String>>,
}

impl Writer {
    /// One write: a create (and the new id to the back of the pool) or a delete of `victim`.
    async fn write(&self, n: u64, victim: Option<String>) -> Result<(&'static str, f64), String> {
        let Self {
            client,
            base,
            key,
            runtimes,
            tag,
            pool,
        } = self;
        let started = Instant::now();
        let (kind, request) = match &victim {
            Some(id) => ("delete", client.delete(format!("{base}/v1/rules/{id}"))),
            None => {
                let runtime = 1 + n % runtimes.saturating_sub(1).max(1);
                let body = serde_json::json!({
                    "host": format!("churn{n}-{tag}.example.com"),
                    "path": "/v1/*",
                    "injection": {"credential": SECRET_NAME, "header": "Authorization",
                                  "value": "Bearer ${credential}"},
                });
                (
                    "create",
                    client
                        .post(format!("{base}/v1/runtimes/rt-{runtime}/rules"))
                        .json(&body),
                )
            }
        };
        let response = request
            .bearer_auth(key)
            .send()
            .await
            .map_err(|err| format!("{kind}: {err}"))?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|err| format!("{kind}: reading the answer: {err}"))?;
        let seconds = started.elapsed().as_secs_f64();
        if !status.is_success() {
            return Err(format!(
                "{kind}: HTTP {status}: {}",
                String::from_utf8_lossy(&body[..body.len().min(300)])
            ));
        }
        if victim.is_none() {
            let created: serde_json::Value = serde_json::from_slice(&body)
                .map_err(|err| format!("create: the answer: {err}"))?;
            let id = created["id"]
                .as_str()
                .ok_or("create: the answer has no id")?;
            pool.lock().unwrap().push_back(id.to_owned());
        }
        Ok((kind, seconds))
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, address, key, rate, writers, runtimes, tag, pool_file] = &args[..] else {
        eprintln!("usage: admin_churn ADMIN_ADDRESS API_KEY RATE WRITERS RUNTIMES TAG POOL_FILE");
        std::process::exit(2);
    };
    let rate: f64 = rate.parse().expect("RATE: writes per second");
    let writers: usize = writers.parse().expect("WRITERS: a count");
    let runtimes: u64 = runtimes.parse().expect("RUNTIMES: a count");
    assert!(
        rate > 0.0 && writers > 0,
        "RATE and WRITERS must be positive"
    );
    let pool: VecDeque<String> = std::fs::read_to_string(pool_file)
        .expect("POOL_FILE")
        .lines()
        .filter(|line| !line.is_empty())
        .map(str::to_owned)
        .collect();
    let client = reqwest::Client::builder()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(writers)
        .timeout(Duration::from_secs(60))
        .build()
        .expect("HTTP client");
    let writer = Arc::new(Writer {
        client,
        base: format!("http://{address}"),
        key: key.clone(),
        runtimes,
        tag: tag.clone(),
        pool: Mutex::new(pool),
    });
    let record = Arc::new(Mutex::new(Record::default()));
    let in_flight = Arc::new(Semaphore::new(writers));

    let mut stdin = tokio::io::stdin();
    let mut sink = [0u8; 64];
    let stopped = async move { while stdin.read(&mut sink).await.is_ok_and(|read| read > 0) {} };
    tokio::pin!(stopped);
    let started = Instant::now();
    let mut n = 0u64;
    loop {
        let due = started + Duration::from_secs_f64(n as f64 / rate);
        let permit = tokio::select! {
            _ = &mut stopped => break,
            permit = async {
                tokio::time::sleep_until(due.into()).await;
                in_flight.clone().acquire_owned().await.expect("never closed")
            } => permit,
        };
        let victim = if n % 2 == 1 {
            writer.pool.lock().unwrap().pop_front()
        } else {
            None
        };
        let (writer, record) = (writer.clone(), record.clone());
        tokio::spawn(async move {
            let done = writer.write(n, victim).await;
            let mut record = record.lock().unwrap();
            match done {
                Ok(("create", seconds)) => record.create.push(seconds),
                Ok((_, seconds)) => record.delete.push(seconds),
                Err(what) => record.failed(what),
            }
            drop(permit);
        });
        n += 1;
    }
    // Every permit back: no write in flight.
    let _all = in_flight
        .acquire_many(writers as u32)
        .await
        .expect("never closed");
    let seconds = started.elapsed().as_secs_f64();
    let record = record.lock().unwrap();
    let pool: Vec<String> = writer.pool.lock().unwrap().iter().cloned().collect();
    println!(
        "{}",
        serde_json::json!({
            "create": record.create,
            "delete": record.delete,
            "errors": record.errors,
            "first_error": record.first_error,
            "seconds": seconds,
            "pool": pool,
        })
    );
}
