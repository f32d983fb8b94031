//! A load generator for runta's Envoy gateway as an HTTPS client uses it: CONNECT tunnels kept
//! alive with many requests each, next to plain-HTTP requests through the same proxy, and the
//! cost of opening a tunnel (CONNECT, TLS handshake with the leaf runta mints, first request).
//!
//! usage: tunnel_load MODE PROXY_PORT TOKEN CA_FILE HOST PORT CONNECTIONS SECONDS
//!   MODE plain      absolute-form GETs over kept-alive proxy connections
//!        tunnel     one CONNECT per connection, then kept-alive GETs inside its TLS
//!        handshake  sequential new tunnels with one GET each; HOST `*.x` gets a new name per
//!                   tunnel (`t<n>.x`: minted by runta on the spot), another HOST the same name
//! Prints one JSON line: requests, rps, p50_ms, p99_ms, errors.

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use rustls::pki_types::pem::PemObject as _;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

struct Target {
    proxy: u16,
    credentials: String,
    tls: Arc<rustls::ClientConfig>,
    host: String,
    port: u16,
}

/// Reads one HTTP/1.1 response with a content length (or chunked); answers the status.
async fn read_response<R: tokio::io::AsyncRead + Unpin>(
    reader: &mut BufReader<R>,
) -> std::io::Result<u16> {
    let mut line = String::new();
    reader.read_line(&mut line).await?;
    let status = line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
    let (mut length, mut chunked) = (0usize, false);
    loop {
        line.clear();
        reader.read_line(&mut line).await?;
        let lower = line.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            length = v.trim().parse().unwrap_or(0);
        }
        chunked |= lower.starts_with("transfer-encoding:") && lower.contains("chunked");
        if line == "\r\n" || line.is_empty() {
            break;
        }
    }
    if chunked {
        loop {
            line.clear();
            reader.read_line(&mut line).await?;
            let size = usize::from_str_radix(line.trim(), 16).unwrap_or(0);
            let mut chunk = vec![0; size + 2];
            reader.read_exact(&mut chunk).await?;
            if size == 0 {
                break;
            }
        }
    } else {
        let mut body = vec![0; length];
        reader.read_exact(&mut body).await?;
    }
    Ok(status)
}

async fn send<W: AsyncWrite + Unpin>(writer: &mut W, text: &str) -> std::io::Result<()> {
    writer.write_all(text.as_bytes()).await?;
    writer.flush().await
}

/// A TLS connection to `host` through a CONNECT tunnel.
async fn open_tunnel(
    target: &Target,
    host: &str,
) -> std::io::Result<BufReader<tokio_rustls::client::TlsStream<TcpStream>>> {
    let mut tcp = TcpStream::connect(("127.0.0.1", target.proxy)).await?;
    tcp.set_nodelay(true)?;
    let authority = format!("{host}:{}", target.port);
    send(
        &mut tcp,
        &format!(
            "CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\nProxy-Authorization: Basic {}\r\n\r\n",
            target.credentials
        ),
    )
    .await?;
    let mut reader = BufReader::new(tcp);
    let mut line = String::new();
    reader.read_line(&mut line).await?;
    if !line.contains(" 200") {
        return Err(std::io::Error::other(format!("CONNECT: {line:?}")));
    }
    loop {
        line.clear();
        reader.read_line(&mut line).await?;
        if line == "\r\n" || line.is_empty() {
            break;
        }
    }
    let name =
        rustls::pki_types::ServerName::try_from(host.to_owned()).map_err(std::io::Error::other)?;
    let tls = tokio_rustls::TlsConnector::from(target.tls.clone())
        .connect(name, reader.into_inner())
        .await?;
    Ok(BufReader::new(tls))
}

async fn get_in_tunnel(
    tunnel: &mut BufReader<tokio_rustls::client::TlsStream<TcpStream>>,
    target: &Target,
    host: &str,
) -> std::io::Result<u16> {
    send(
        tunnel.get_mut(),
        &format!(
            "GET /v1/models HTTP/1.1\r\nHost: {host}:{}\r\n\r\n",
            target.port
        ),
    )
    .await?;
    read_response(tunnel).await
}

/// One connection's loop; answers each request's latency (and the errors).
async fn worker(target: Arc<Target>, mode: String, until: Instant) -> (Vec<Duration>, u64) {
    let mut latencies = Vec::new();
    let mut errors = 0;
    match mode.as_str() {
        "plain" => {
            let Ok(tcp) = TcpStream::connect(("127.0.0.1", target.proxy)).await else {
                return (latencies, 1);
            };
            let _ = tcp.set_nodelay(true);
            let mut conn = BufReader::new(tcp);
            let request = format!(
                "GET http://{host}:{port}/v1/models HTTP/1.1\r\nHost: {host}:{port}\r\nProxy-Authorization: Basic {cred}\r\n\r\n",
                host = target.host,
                port = target.port,
                cred = target.credentials
            );
            while Instant::now() < until {
                let started = Instant::now();
                match async {
                    send(conn.get_mut(), &request).await?;
                    read_response(&mut conn).await
                }
                .await
                {
                    Ok(200) => latencies.push(started.elapsed()),
                    Ok(_) => errors += 1,
                    Err(_) => return (latencies, errors + 1),
                }
            }
        }
        "tunnel" => {
            let Ok(mut tunnel) = open_tunnel(&target, &target.host).await else {
                return (latencies, 1);
            };
            while Instant::now() < until {
                let started = Instant::now();
                match get_in_tunnel(&mut tunnel, &target, &target.host).await {
                    Ok(200) => latencies.push(started.elapsed()),
                    Ok(_) => errors += 1,
                    Err(_) => return (latencies, errors + 1),
                }
            }
        }
        "handshake" => {
            let mut n = 0u64;
            while Instant::now() < until {
                n += 1;
                let host = match target.host.strip_prefix("*.") {
                    Some(suffix) => format!("t{n}-{}.{suffix}", std::process::id()),
                    None => target.host.clone(),
                };
                let started = Instant::now();
                let result = async {
                    let mut tunnel = open_tunnel(&target, &host).await?;
                    get_in_tunnel(&mut tunnel, &target, &host).await
                }
                .await;
                match result {
                    Ok(200) => latencies.push(started.elapsed()),
                    other => {
                        if errors == 0 {
                            eprintln!("tunnel_load: first failure ({host}): {other:?}");
                        }
                        errors += 1;
                    }
                }
            }
        }
        other => panic!("unknown mode {other}"),
    }
    (latencies, errors)
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [mode, proxy, token, ca, host, port, connections, seconds] = args.as_slice() else {
        eprintln!(
            "usage: tunnel_load plain|tunnel|handshake PROXY_PORT TOKEN CA_FILE HOST PORT CONNECTIONS SECONDS"
        );
        std::process::exit(2);
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(ca).expect("CA file") {
        roots.add(cert.expect("PEM")).expect("a CA certificate");
    }
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let target = Arc::new(Target {
        proxy: proxy.parse().expect("PROXY_PORT"),
        credentials: base64::engine::general_purpose::STANDARD.encode(format!("{token}:x")),
        tls: Arc::new(tls),
        host: host.clone(),
        port: port.parse().expect("PORT"),
    });
    let seconds: f64 = seconds.parse().expect("SECONDS");
    let started = Instant::now();
    let until = started + Duration::from_secs_f64(seconds);
    let tasks: Vec<_> = (0..connections.parse::<usize>().expect("CONNECTIONS"))
        .map(|_| tokio::spawn(worker(target.clone(), mode.clone(), until)))
        .collect();
    let mut latencies = Vec::new();
    let mut errors = 0;
    for task in tasks {
        let (l, e) = task.await.unwrap();
        latencies.extend(l);
        errors += e;
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort();
    let at = |q: f64| {
        latencies
            .get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    println!(
        "{{\"requests\": {}, \"rps\": {:.1}, \"p50_ms\": {:.3}, \"p99_ms\": {:.3}, \"errors\": {}}}",
        latencies.len(),
        latencies.len() as f64 / elapsed,
        at(0.5),
        at(0.99),
        errors
    );
}
