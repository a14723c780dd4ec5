//! The bench: reproduces a clinic, its uplink and the hub on one machine.
//!
//! - [`fleet`] — a throwaway fleet CA with certificates for central and boxes.
//! - [`fleet_admin`] — a fleet made with `yilian-provision` around a real
//!   `yilian-central` with enrollment.
//! - [`configs`] — configuration files for central and gateways.
//! - [`procs`] — the real `yilian-gateway` / `yilian-central` processes.
//! - [`relay`] — a UDP relay between gateway and central that can cut the
//!   link (black-hole) and re-map the gateway's address like a NAT would.
//! - [`files`] — deterministic test payloads.
//! - [`cable`] — serial cables (socat pty pairs) that can be pulled.
//! - [`orthanc`] — Orthanc as the hospital PACS, with its own config.
//! - [`postgres`] — a PostgreSQL server of the test's own, for central's
//!   index at alliance scale.
//! - [`printer`] — a CUPS scheduler of the test's own with a virtual PDF
//!   printer, and `pdftoppm` to look at what it printed.
//! - [`modality`] — CT studies as Part 10 files, dcmtk's storescu/echoscu.
//! - [`cart`] — an ECG cart: SCP-ECG records, raw or by lrzsz XMODEM/YMODEM.
//! - [`wan`] — the emulated uplink: link profiles between two network
//!   namespaces joined by TUN devices.
//! - [`clinic`] — central and a gateway as real processes on either side
//!   of the emulated uplink.
//! - [`hub`] — central and a gateway in-process on loopback.
//! - [`hw`] — real devices named by `YILIAN_HW_*` variables.
//! - [`nspawn`] — a Debian 12 machine booted with systemd, for the packages.
//! - [`demo`], [`bench`]: the `yilian-rig demo` and `yilian-rig bench` jobs.

#![forbid(unsafe_code)]

pub mod analyzer;
pub mod bench;
pub mod bench_link;
pub mod cable;
pub mod cart;
pub mod clinic;
pub mod configs;
pub mod demo;
pub mod files;
pub mod fleet;
pub mod fleet_admin;
pub mod garage;
pub mod hub;
pub mod hw;
pub mod logs;
pub mod modality;
pub mod nspawn;
pub mod orthanc;
pub mod plot;
pub mod postgres;
pub mod printer;
pub mod procs;
pub mod relay;
pub mod report;
pub mod scrape;
pub mod swarm;
pub mod units;
pub mod wan;
pub mod webdriver;
