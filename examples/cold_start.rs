//! Cold start: the time from starting a function's process to its first
//! `GET /runtime/invocation/next` (ready for the first event), measured against
//! a fake Runtime API on loopback, for this function and for a hello-world
//! `lambda_runtime` function (the floor).
//!
//! usage: cold_start FUNCTION_BINARY HELLO_BINARY [RUNS]

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn ready_time(binary: &str) -> Duration {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let port = listener.local_addr().expect("addr").port();
    let start = Instant::now();
    let mut child = Command::new(binary)
        .env_clear()
        .env("AWS_LAMBDA_RUNTIME_API", format!("127.0.0.1:{port}"))
        .env("AWS_LAMBDA_FUNCTION_NAME", "cold-start")
        .env("AWS_LAMBDA_FUNCTION_VERSION", "1")
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("TABLE_NAME", "cold-start")
        .env("SENDER_EMAIL", "offers@seller.example.com")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let deadline = start + Duration::from_secs(10);
    let stream = loop {
        match listener.accept() {
            Ok((s, _)) => break s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                assert!(
                    Instant::now() < deadline,
                    "{binary} never asked for an event"
                );
                std::thread::sleep(Duration::from_micros(50));
            }
            Err(e) => panic!("accept: {e}"),
        }
    };
    let elapsed = start.elapsed();
    stream.set_nonblocking(false).expect("blocking");
    let mut line = String::new();
    BufReader::new(&stream)
        .read_line(&mut line)
        .expect("request line");
    assert!(
        line.contains("/runtime/invocation/next"),
        "unexpected first call: {line}"
    );
    let _ = child.kill();
    let _ = child.wait();
    elapsed
}

fn stats(mut v: Vec<Duration>) -> (f64, f64, f64) {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    (
        ms(v[0]),
        ms(v[v.len() / 2]),
        ms(v[(v.len() * 9 / 10).min(v.len() - 1)]),
    )
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (function, hello) = (&args[1], &args[2]);
    let runs: usize = args.get(3).and_then(|r| r.parse().ok()).unwrap_or(30);
    // Interleave the two so that machine noise hits both alike.
    let (mut f, mut h) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        h.push(ready_time(hello));
        f.push(ready_time(function));
    }
    let size = |p: &str| {
        std::fs::metadata(p)
            .map(|m| m.len() as f64 / 1e6)
            .unwrap_or(f64::NAN)
    };
    let (fmin, fmed, fp90) = stats(f);
    let (hmin, hmed, hp90) = stats(h);
    println!(
        "## Cold start: process start to ready for the first event ({runs} runs each, x86_64, release)\n"
    );
    println!("| binary | size | min | median | p90 |");
    println!("|---|---:|---:|---:|---:|");
    println!(
        "| hello-world lambda_runtime (floor) | {:.1} MB | {hmin:.2} ms | {hmed:.2} ms | {hp90:.2} ms |",
        size(hello)
    );
    println!(
        "| notify-offer-contacts | {:.1} MB | {fmin:.2} ms | {fmed:.2} ms | {fp90:.2} ms |",
        size(function)
    );
    println!(
        "\nmedian ratio to the floor: {:.2}x (target: within 2x)",
        fmed / hmed
    );
}
