//! Scenario 6: what refused bodies cost. Four decompression bombs at once (1 GiB of zeros each,
//! compressed), per transport and encoding, against a gateway with the shipped limits: its peak
//! resident memory above what it held idle, and what it holds a second later. A gzip body
//! declares its size in its trailer and a one-shot zstd frame in its header; the bombs that lie
//! or declare nothing are the ones the gateway must inflate to find out.

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::Options;
use crate::procs::{self, GatewayOptions};
use crate::sink::Sink;

/// Decompressed size of each bomb.
const BOMB_BYTES: usize = 1 << 30;
/// Bombs sent at once.
const CONCURRENT: usize = 4;
/// How long after the bombs the gateway's memory is read again.
const SETTLE: Duration = Duration::from_secs(1);
/// Ingest turns: the default on a 2-core host (one, so bombs are decoded one after another),
/// and as many as the bombs (all decoded at once, sharing the in-flight budget).
const TURNS: [usize; 2] = [1, CONCURRENT];

/// Resident memory (VmRSS) of a process, in MiB.
fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

struct Bomb {
    name: &'static str,
    encoding: &'static str,
    body: Vec<u8>,
}

fn bombs() -> anyhow::Result<Vec<Arc<Bomb>>> {
    let zeros = vec![0u8; BOMB_BYTES];
    let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gzip.write_all(&zeros)?;
    let honest = gzip.finish()?;
    let mut lying = honest.clone();
    let n = lying.len();
    lying[n - 4..].copy_from_slice(&1000u32.to_le_bytes());
    let mut zlib = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
    zlib.write_all(&zeros)?;
    let mut zstd = zstd::stream::write::Encoder::new(Vec::new(), 3)?;
    zstd.write_all(&zeros)?;
    Ok([
        Bomb {
            name: "gzip, size in its trailer",
            encoding: "gzip",
            body: honest,
        },
        Bomb {
            name: "gzip, trailer lying (1000 bytes)",
            encoding: "gzip",
            body: lying,
        },
        Bomb {
            name: "deflate (no size)",
            encoding: "deflate",
            body: zlib.finish()?,
        },
        Bomb {
            name: "zstd stream (no size)",
            encoding: "zstd",
            body: zstd.finish()?,
        },
    ]
    .into_iter()
    .map(Arc::new)
    .collect())
}

/// Sends one bomb; returns the answer (HTTP status, or gRPC status from the headers).
async fn send(client: &reqwest::Client, url: &str, grpc: bool, bomb: &Bomb) -> String {
    let request = if grpc {
        let mut body = vec![1u8];
        body.extend_from_slice(&(bomb.body.len() as u32).to_be_bytes());
        body.extend_from_slice(&bomb.body);
        client
            .post(format!(
                "{url}/opentelemetry.proto.collector.trace.v1.TraceService/Export"
            ))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .header("grpc-encoding", bomb.encoding)
            .body(body)
    } else {
        client
            .post(format!("{url}/v1/traces"))
            .header("content-type", "application/x-protobuf")
            .header("content-encoding", bomb.encoding)
            .body(bomb.body.clone())
    };
    match request.send().await {
        Ok(r) if grpc => format!(
            "grpc-status {}",
            r.headers()
                .get("grpc-status")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("?")
        ),
        Ok(r) => r.status().as_u16().to_string(),
        Err(e) => format!("error: {e}"),
    }
}

pub async fn refused_bodies(_opts: &Options) -> anyhow::Result<String> {
    let mut t = format!(
        "### 6. Refused bodies: {CONCURRENT} bombs of 1 GiB of zeros at once, shipped limits \
         (64 MiB per body, 64 MiB in flight)\n\n\
         | transport | ingest turns | bomb | on the wire | answers | idle RSS MiB | peak RSS above idle MiB | RSS 1 s after, above idle MiB | took ms |\n\
         |---|---|---|---|---|---|---|---|---|\n"
    );
    let bombs = bombs().context("make the bombs")?;
    for (grpc, turns, bomb) in [false, true]
        .into_iter()
        .flat_map(|grpc| TURNS.into_iter().map(move |turns| (grpc, turns)))
        .flat_map(|(grpc, turns)| bombs.iter().map(move |bomb| (grpc, turns, bomb)))
    {
        {
            let sink = Sink::start().await?;
            let gateway = procs::start_gateway(&GatewayOptions {
                tls: None,
                tenants: Vec::new(),
                mlflow_url: sink.url(),
                durable: false,
                trace_info_concurrency: 1,
                binary: None,
                ingest_concurrency: Some(turns),
            })
            .await?;
            tokio::time::sleep(SETTLE).await;
            let idle = rss_mib(gateway.pid());
            let client = reqwest::Client::builder().http2_prior_knowledge().build()?;
            let url = if grpc {
                gateway.grpc_url.clone()
            } else {
                gateway.http_url.clone()
            };
            let started = Instant::now();
            let answers = futures_join(
                (0..CONCURRENT)
                    .map(|_| {
                        let (client, url, bomb) = (client.clone(), url.clone(), bomb.clone());
                        async move { send(&client, &url, grpc, &bomb).await }
                    })
                    .collect(),
            )
            .await;
            let took = started.elapsed();
            let peak = gateway.peak_rss_mib();
            tokio::time::sleep(SETTLE).await;
            let after = rss_mib(gateway.pid());
            let mut answers = answers;
            answers.sort();
            answers.dedup();
            let row = format!(
                "| {} | {turns} | {} | {:.1} MiB | {} | {idle:.1} | {:.1} | {:.1} | {:.0} |",
                if grpc { "gRPC" } else { "HTTP" },
                bomb.name,
                bomb.body.len() as f64 / (1 << 20) as f64,
                answers.join(", "),
                peak - idle,
                after - idle,
                took.as_secs_f64() * 1e3
            );
            println!("{row}");
            t += &row;
            t.push('\n');
        }
    }
    Ok(t)
}

/// Runs the futures together and returns their outputs in order.
async fn futures_join<F: std::future::Future<Output = String> + Send + 'static>(
    futures: Vec<F>,
) -> Vec<String> {
    let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap_or_else(|e| format!("task: {e}")));
    }
    out
}
