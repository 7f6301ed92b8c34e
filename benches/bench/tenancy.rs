//! Scenario 7: what a shared gateway costs. TLS with tenant tokens against plaintext at 10k
//! spans/s (interleaved windows: CPU per span and ack latency), and fair share: tenant B's
//! acceptance and ack p99 alone, and while tenant A floods at ten times its quota.

use std::sync::Arc;
use std::time::Duration;

use crate::Options;
use crate::ab::{self, Variant, Windows};
use crate::load::{self, Live, LoadReport, LoadSpec, Protocol};
use crate::procs::{self, BenchTenant, GatewayOptions, TlsFiles};
use crate::sink::Sink;

/// Interleaved windows per gateway and protocol for the TLS comparison, and their length: short
/// enough that the whole suite stays within its time; ratios, not absolute figures.
const TLS_ROUNDS: usize = 3;
const TLS_WINDOW_SECS: f64 = 5.0;
/// Tenant A's quota, and what it offers: ten times that.
const QUOTA: f64 = 5_000.0;
const FLOOD: f64 = 50_000.0;
/// Tenant B's steady load.
const STEADY: f64 = 5_000.0;
/// Alone, flood, alone, flood: each this long.
const FAIR_WINDOW_SECS: f64 = 6.0;
const FAIR_ROUNDS: usize = 2;
const SPANS_PER_REQUEST: usize = 100;

const TENANT_A: BenchTenant = BenchTenant {
    name: "team-a",
    token: "bench-token-a",
    max_spans_per_second: QUOTA,
};
const TENANT_B: BenchTenant = BenchTenant {
    name: "team-b",
    token: "bench-token-b",
    max_spans_per_second: 0.0,
};

pub async fn shared_gateway(opts: &Options) -> anyhow::Result<String> {
    let mut out = tls_cost(opts).await?;
    out.push_str(&fair_share(opts).await?);
    Ok(out)
}

async fn tls_cost(opts: &Options) -> anyhow::Result<String> {
    let pki = fixtures::TestPki::new("bench CA")?;
    let plain = ab::shipped(None);
    let tls = GatewayOptions {
        tls: Some(TlsFiles::new(&pki)?),
        tenants: vec![TENANT_B],
        ..ab::shipped(None)
    };
    let variants = [
        Variant {
            label: "plaintext, open".into(),
            options: plain,
        },
        Variant {
            label: "TLS, tenant token".into(),
            options: tls,
        },
    ];
    let windows = Windows {
        rounds: TLS_ROUNDS,
        length: opts.secs(TLS_WINDOW_SECS),
    };
    ab::interleave(
        &variants,
        windows,
        "7a. TLS and tenant tokens against plaintext",
    )
    .await
}

fn load(tenant: &BenchTenant, connections: usize, rate: f64, duration: Duration) -> LoadSpec {
    LoadSpec {
        ca: None,
        protocol: Protocol::Http,
        target: String::new(),
        connections,
        spans_per_request: SPANS_PER_REQUEST,
        trace_spans: crate::payload::SPANS_PER_TRACE,
        rate: Some(rate),
        duration,
        headers: vec![(
            "authorization".to_string(),
            format!("Bearer {}", tenant.token),
        )],
    }
}

fn acceptance(r: &LoadReport) -> f64 {
    let errors = r.error_count();
    100.0 * (r.requests.saturating_sub(errors)) as f64 / r.requests.max(1) as f64
}

async fn fair_share(opts: &Options) -> anyhow::Result<String> {
    let sink = Sink::start().await?;
    let gateway = procs::start_gateway(&GatewayOptions {
        tenants: vec![TENANT_B, TENANT_A],
        mlflow_url: sink.url(),
        ..ab::shipped(None)
    })
    .await?;
    let window = opts.secs(FAIR_WINDOW_SECS);
    let mut table = format!(
        "### 7b. Fair share: tenant B at {STEADY} spans/s (OTLP/HTTP, {SPANS_PER_REQUEST} spans/request, \
         2 connections) alone and while tenant A offers {FLOOD} spans/s against its quota of {QUOTA} \
         (4 connections); windows of {:.1} s, alternating\n\n\
         | window | B requests | B accepted % | B ack p50 ms | B ack p99 ms | A offered requests | A accepted spans/s | A refused |\n\
         |---|---|---|---|---|---|---|---|\n",
        window.as_secs_f64()
    );
    let (mut alone, mut flooded) = (Vec::new(), Vec::new());
    for _ in 0..FAIR_ROUNDS {
        for flood in [false, true] {
            let b = load::run(
                gateway.aim(load(&TENANT_B, 2, STEADY, window)),
                Arc::new(Live::default()),
            );
            let (b, a) = if flood {
                let a = load::run(
                    gateway.aim(load(&TENANT_A, 4, FLOOD, window)),
                    Arc::new(Live::default()),
                );
                let (b, a) = tokio::join!(b, a);
                (b?, Some(a?))
            } else {
                (b.await?, None)
            };
            let line = format!(
                "| {} | {} | {:.2} | {:.2} | {:.2} | {} | {} | {} |\n",
                if flood { "A flooding" } else { "B alone" },
                b.requests,
                acceptance(&b),
                b.percentile_ms(0.5),
                b.percentile_ms(0.99),
                a.as_ref().map_or("".into(), |a| a.requests.to_string()),
                a.as_ref()
                    .map_or("".into(), |a| format!("{:.0}", a.spans_per_sec())),
                a.as_ref().map_or("".into(), LoadReport::errors_text),
            );
            print!("{line}");
            table += &line;
            if flood { &mut flooded } else { &mut alone }.push(b);
        }
    }
    let mean = |rs: &[LoadReport], f: &dyn Fn(&LoadReport) -> f64| {
        rs.iter().map(f).sum::<f64>() / rs.len().max(1) as f64
    };
    let p99 = |r: &LoadReport| r.percentile_ms(0.99);
    table += &format!(
        "\nB while A floods: {:.2} % accepted (alone {:.2} %), ack p99 {:.2}× alone's ({:.2} against {:.2} ms)\n",
        mean(&flooded, &acceptance),
        mean(&alone, &acceptance),
        mean(&flooded, &p99) / mean(&alone, &p99),
        mean(&flooded, &p99),
        mean(&alone, &p99),
    );
    Ok(table)
}
