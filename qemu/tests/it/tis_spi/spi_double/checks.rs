//! Self-checks of the device model, driven by a minimal host written here from the PTP (not
//! the agent's driver) against a scripted TPM, so the model is known to be right before it
//! judges the driver. They never touch swtpm.

use super::{Config, Fault, INTF_CAPABILITY, SpiDouble, State, Stats};

const ACCESS: u16 = 0x00;
const STS: u16 = 0x18;
const FIFO: u16 = 0x24;
const DID_VID: u16 = 0xF00;

/// A scripted TPM: answers each command with a header and the command echoed, so the
/// response is 10 bytes longer than the command and its content is known.
fn echo(cmd: &[u8]) -> Result<Vec<u8>, String> {
    let mut r = vec![0x80, 0x01];
    r.extend_from_slice(&u32::try_from(cmd.len() + 10).unwrap().to_be_bytes());
    r.extend_from_slice(&[0, 0, 0, 0]);
    r.extend_from_slice(cmd);
    Ok(r)
}

/// A command of `len` bytes with a correct size field.
fn command(len: usize) -> Vec<u8> {
    let mut c = vec![0x80, 0x01];
    c.extend_from_slice(&u32::try_from(len).unwrap().to_be_bytes());
    c.extend((6..len).map(|i| u8::try_from(i % 251).unwrap()));
    c
}

fn double(cfg: Config) -> (SpiDouble, super::Probe) {
    SpiDouble::with_tpm(cfg, echo).unwrap()
}

/// One transaction the way the PTP describes it; returns the wait states seen, or `None` if
/// the device was still waiting after `max_polls` (chip select released).
fn txn(dev: &mut SpiDouble, read: bool, reg: u16, data: &mut [u8], max_polls: u32) -> Option<u32> {
    let size = u8::try_from(data.len() - 1).unwrap();
    let [_, a2, a1, a0] = (0x00D4_0000u32 | u32::from(reg)).to_be_bytes();
    let mut hdr = [if read { 0x80 } else { 0 } | size, a2, a1, a0];
    dev.transfer(&mut hdr, true);
    let mut waits = 0;
    let mut ready = hdr[3] & 1 == 1;
    while !ready {
        if waits == max_polls {
            dev.transfer(&mut [], false);
            return None;
        }
        let mut poll = [0u8];
        dev.transfer(&mut poll, true);
        waits += 1;
        ready = poll[0] & 1 == 1;
    }
    dev.transfer(data, false);
    Some(waits)
}

fn read(dev: &mut SpiDouble, reg: u16, n: usize) -> Vec<u8> {
    let mut d = vec![0u8; n];
    txn(dev, true, reg, &mut d, 8).unwrap();
    d
}

fn write(dev: &mut SpiDouble, reg: u16, v: &[u8]) {
    let mut d = v.to_vec();
    txn(dev, false, reg, &mut d, 8).unwrap();
}

fn sts(dev: &mut SpiDouble) -> (u8, u16) {
    let s = read(dev, STS, 4);
    assert_eq!(s[3] & 0x0C, 0x04, "tpmFamily must say TPM 2.0");
    (s[0], u16::from_le_bytes([s[1], s[2]]))
}

fn open(dev: &mut SpiDouble) {
    write(dev, ACCESS, &[0x02]);
    assert_eq!(
        read(dev, ACCESS, 1)[0] & 0xA0,
        0xA0,
        "locality 0 granted and valid"
    );
}

/// Runs one command like a careful host: commandReady, bursts, expect, tpmGo, dataAvail,
/// bursts, commandReady. Returns the response.
fn run(dev: &mut SpiDouble, cmd: &[u8]) -> Vec<u8> {
    if sts(dev).0 & 0x40 == 0 {
        write(dev, STS, &[0x40]);
    }
    assert_eq!(sts(dev).0 & 0x40, 0x40, "Ready after commandReady");
    let mut sent = 0;
    while sent < cmd.len() {
        let (s, burst) = sts(dev);
        assert!(sent == 0 || s & 0x08 != 0, "expect while bytes remain");
        let n = usize::from(burst).min(cmd.len() - sent).min(64);
        if n > 0 {
            write(dev, FIFO, &cmd[sent..sent + n]);
            sent += n;
        }
    }
    assert_eq!(sts(dev).0 & 0x88, 0x80, "expect = 0 after the last byte");
    write(dev, STS, &[0x20]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while sts(dev).0 & 0x90 != 0x90 {
        assert!(
            std::time::Instant::now() < deadline,
            "no dataAvail within 10 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    let mut rsp = Vec::new();
    loop {
        let (s, burst) = sts(dev);
        if s & 0x10 == 0 {
            break;
        }
        if burst == 0 {
            continue;
        }
        rsp.extend(read(dev, FIFO, usize::from(burst).min(64)));
    }
    write(dev, STS, &[0x40]);
    rsp
}

/// commandReady, one status read, the whole command in one burst (at most 64 bytes).
fn load(dev: &mut SpiDouble, cmd: &[u8]) {
    write(dev, STS, &[0x40]);
    assert!(usize::from(sts(dev).1) >= cmd.len());
    write(dev, FIFO, cmd);
}

fn assert_clean(stats: &Stats) {
    assert_eq!(stats.protocol_errors, 0, "{:?}", stats.errors);
    assert!(
        stats.backend_errors.is_empty(),
        "{:?}",
        stats.backend_errors
    );
    assert!(!stats.selected, "chip select left asserted");
}

#[test]
fn commands_round_trip_for_each_wait_state_and_burst() {
    for waits in [0u8, 1, 3] {
        for burst in [1u16, 8, 64] {
            let cfg = Config {
                wait_states: waits,
                burst_count: burst,
                ..Config::default()
            };
            let (mut dev, probe) = double(cfg);
            open(&mut dev);
            for len in [10, 64, 65, 300] {
                let cmd = command(len);
                let rsp = run(&mut dev, &cmd);
                assert_eq!(
                    rsp,
                    echo(&cmd).unwrap(),
                    "{len} bytes, waits {waits}, burst {burst}"
                );
                assert_eq!(
                    dev.state(),
                    State::Idle,
                    "commandReady after Completion -> Idle"
                );
            }
            let s = probe.take_stats();
            assert_clean(&s);
            assert_eq!(s.commands, 4);
            assert_eq!(s.responses, 4);
            assert_eq!(s.wait_bytes, u64::from(waits) * s.transactions, "{s:?}");
            assert_eq!(s.fifo_bytes_in, 10 + 64 + 65 + 300);
            assert!(s.max_size <= usize::from(burst).max(4), "{s:?}");
        }
    }
}

#[test]
fn identity_registers_read_from_any_locality_and_fifo_registers_only_when_active() {
    let (mut dev, probe) = double(Config::default());
    let id = read(&mut dev, DID_VID, 4);
    assert_eq!(id, [0xD1, 0x15, 0x1B, 0x00]);
    assert_eq!(read(&mut dev, 0x14, 4), INTF_CAPABILITY.to_le_bytes());
    assert_eq!(read(&mut dev, 0xF04, 1), [0x16]);
    assert_eq!(probe.stats().protocol_errors, 0);
    // STS before requesting the locality: 0xFF and a recorded violation.
    assert_eq!(read(&mut dev, STS, 4), [0xFF; 4]);
    write(&mut dev, STS, &[0x40]);
    assert_eq!(
        dev.state(),
        State::Idle,
        "write to an inactive locality is dropped"
    );
    let s = probe.take_stats();
    assert_eq!(s.protocol_errors, 2);
    assert!(
        s.errors[0].contains("TPM_STS through locality 0, which is not active"),
        "{s:?}"
    );
    open(&mut dev);
    assert_eq!(dev.active_locality(), Some(0));
    // Locality 2 asks while 0 is active: pending, granted when 0 relinquishes.
    write(&mut dev, 0x2000, &[0x02]);
    assert_eq!(
        read(&mut dev, ACCESS, 1)[0] & 0x04,
        0x04,
        "pendingRequest seen by 0"
    );
    write(&mut dev, ACCESS, &[0x20]);
    assert_eq!(dev.active_locality(), Some(2));
    assert_eq!(read(&mut dev, 0x2000, 1)[0] & 0x20, 0x20);
    assert_clean(&probe.stats());
}

#[test]
fn framing_violations_are_recorded_and_never_panic() {
    let (mut dev, probe) = double(Config::default());
    // Chip select released after two header bytes.
    dev.transfer(&mut [0x80, 0xD4], false);
    // Reserved bit 6, an address outside the window, locality 5.
    for hdr in [
        [0xC0, 0xD4, 0x00, 0x00],
        [0x80, 0xD5, 0x00, 0x00],
        [0x80, 0xD4, 0x50, 0x00],
    ] {
        let mut b = [hdr.as_slice(), &[0u8; 3]].concat();
        dev.transfer(&mut b, false);
        assert_eq!(&b[4..], &[0xFF; 3], "an ignored transaction floats MISO");
    }
    // Data longer than the header's size: one read of 1 byte clocking 3.
    let mut b = [0x80, 0xD4, 0x0F, 0x00, 0, 0, 0];
    dev.transfer(&mut b, false);
    assert_eq!(b[4..], [0xD1, 0xFF, 0xFF]);
    // Chip select released after 1 of 4 data bytes.
    dev.transfer(&mut [0x83, 0xD4, 0x0F, 0x00, 0], false);
    // The same transaction split at every byte is fine.
    let mut whole = [0x83, 0xD4, 0x0F, 0x00, 0, 0, 0, 0];
    for i in 0..whole.len() {
        let last = i + 1 == whole.len();
        dev.transfer(&mut whole[i..=i], !last);
    }
    assert_eq!(whole[4..], [0xD1, 0x15, 0x1B, 0x00]);
    let s = probe.stats();
    assert_eq!(s.protocol_errors, 6, "{:#?}", s.errors);
    for (i, want) in [
        "after 2 of 4 header bytes",
        "reserved bit 6",
        "outside the TPM window",
        "locality 5",
        "data longer than the header's size 1",
        "after 1 of 4 data bytes",
    ]
    .iter()
    .enumerate()
    {
        assert!(
            s.errors[i].contains(want),
            "{i}: {} lacks {want}",
            s.errors[i]
        );
    }
    assert!(!s.selected);
}

#[test]
fn bursts_beyond_burst_count_and_writes_before_command_ready_are_violations() {
    let cfg = Config {
        burst_count: 8,
        ..Config::default()
    };
    let (mut dev, probe) = double(cfg);
    open(&mut dev);
    assert_eq!(sts(&mut dev).1, 0, "no burst in Idle");
    write(&mut dev, FIFO, &[0x80]);
    assert_eq!(dev.state(), State::Idle);
    write(&mut dev, STS, &[0x40]);
    assert_eq!(sts(&mut dev).1, 8);
    write(&mut dev, FIFO, &command(10));
    write(&mut dev, STS, &[0x60]);
    let s = probe.take_stats();
    assert_eq!(s.protocol_errors, 4, "{:#?}", s.errors);
    assert!(s.errors[0].contains("past the burstCount"));
    assert!(s.errors[1].contains("FIFO write in state Idle"));
    assert!(s.errors[2].contains("FIFO write of 10 bytes goes past the burstCount"));
    assert!(s.errors[3].contains("more than one of commandReady"));
    // The command did arrive (the model is lenient after recording); tpmGo runs it.
    write(&mut dev, STS, &[0x20]);
    assert!(matches!(dev.state(), State::Execution | State::Completion));
}

#[test]
fn wait_states_are_signalled_on_header_byte_3_and_counted() {
    let cfg = Config {
        wait_states: 3,
        ..Config::default()
    };
    let (mut dev, probe) = double(cfg);
    let mut hdr = [0x83, 0xD4, 0x0F, 0x00];
    dev.transfer(&mut hdr, true);
    assert_eq!(hdr[3] & 1, 0, "byte 3 signals a wait state");
    assert_eq!(
        hdr[2] & 1,
        1,
        "earlier bytes say the opposite, to catch sloppy hosts"
    );
    let mut polls = [0u8; 3];
    dev.transfer(&mut polls, true);
    assert_eq!(polls.map(|p| p & 1), [0, 0, 1]);
    let mut data = [0u8; 4];
    dev.transfer(&mut data, false);
    assert_eq!(data, [0xD1, 0x15, 0x1B, 0x00]);
    let s = probe.stats();
    assert_eq!(
        (s.transactions, s.wait_bytes, s.waited_transactions),
        (1, 3, 1)
    );
    assert_clean(&s);
}

#[test]
fn each_fault_bends_one_command_and_the_next_runs() {
    let cmd = command(20);
    let cfg = Config::default();

    // StuckExpect: expect stays 1 after the last byte.
    let (mut dev, probe) = double(cfg);
    open(&mut dev);
    probe.arm(Fault::StuckExpect);
    load(&mut dev, &cmd);
    assert_eq!(sts(&mut dev).0 & 0x08, 0x08);
    write(&mut dev, STS, &[0x40]);
    assert_eq!(run(&mut dev, &cmd), echo(&cmd).unwrap());
    let s = probe.take_stats();
    assert_eq!(
        (s.faults_fired.clone(), s.faults_cleared, s.aborts),
        (vec![Fault::StuckExpect], 1, 1)
    );
    assert_clean(&s);

    // EarlyDataAvail: dataAvail at tpmGo, 0xFF until the response exists.
    let (mut dev, probe) = SpiDouble::with_tpm(cfg, |c| {
        std::thread::sleep(std::time::Duration::from_millis(100));
        echo(c)
    })
    .unwrap();
    open(&mut dev);
    probe.arm(Fault::EarlyDataAvail);
    load(&mut dev, &cmd);
    write(&mut dev, STS, &[0x20]);
    let (s0, burst) = sts(&mut dev);
    assert_eq!((s0 & 0x10, burst), (0x10, 64));
    assert_eq!(read(&mut dev, FIFO, 10), [0xFF; 10]);
    write(&mut dev, STS, &[0x40]);
    assert_eq!(run(&mut dev, &cmd), echo(&cmd).unwrap());
    let s = probe.take_stats();
    assert_eq!((s.lost_reads, s.aborts, s.faults_cleared), (10, 1, 1));
    assert_clean(&s);

    // DataAvailDrops: half the response, then dataAvail = 0.
    let (mut dev, probe) = double(cfg);
    open(&mut dev);
    probe.arm(Fault::DataAvailDrops);
    let rsp = run(&mut dev, &cmd);
    assert_eq!(rsp, echo(&cmd).unwrap()[..15]);
    assert_eq!(run(&mut dev, &cmd), echo(&cmd).unwrap());
    let s = probe.take_stats();
    assert_eq!(
        (s.aborts, s.responses, s.faults_cleared),
        (1, 1, 1),
        "{s:?}"
    );
    assert_clean(&s);

    // NoResponse: Execution never ends.
    let (mut dev, probe) = double(cfg);
    open(&mut dev);
    probe.arm(Fault::NoResponse);
    load(&mut dev, &cmd);
    write(&mut dev, STS, &[0x20]);
    std::thread::sleep(std::time::Duration::from_millis(50));
    assert_eq!(sts(&mut dev).0 & 0x10, 0);
    assert_eq!(dev.state(), State::Execution);
    write(&mut dev, STS, &[0x40]);
    assert_eq!(run(&mut dev, &cmd), echo(&cmd).unwrap());
    let s = probe.take_stats();
    assert_eq!((s.withheld, s.aborts, s.faults_cleared), (1, 1, 1));
    assert_clean(&s);

    // StuckWaitState: never ready until the host gives up once.
    let (mut dev, probe) = double(cfg);
    open(&mut dev);
    probe.arm(Fault::StuckWaitState);
    let mut d = [0u8; 4];
    assert_eq!(txn(&mut dev, true, STS, &mut d, 100), None);
    assert_eq!(run(&mut dev, &cmd), echo(&cmd).unwrap());
    let s = probe.take_stats();
    assert_eq!((s.abandoned, s.wait_bytes, s.faults_cleared), (1, 100, 1));
    assert_clean(&s);
}

#[test]
fn zero_burst_after_fifo_needs_a_second_status_read() {
    let cfg = Config {
        burst_count: 8,
        zero_burst_after_fifo: true,
        ..Config::default()
    };
    let (mut dev, probe) = double(cfg);
    open(&mut dev);
    let cmd = command(40);
    assert_eq!(run(&mut dev, &cmd), echo(&cmd).unwrap());
    let s = probe.stats();
    assert!(s.zero_bursts >= 10, "{s:?}");
    assert_clean(&s);
}
