//! `ekattest-fleet`: the fleet harness's command line. `run` is the process fleet (swtpm
//! devices, mosquitto, `ekattest-server` and `ekattest-agent` processes), `load` the
//! software-TPM load generator, `vm` the QEMU VM fleet, `nats-users` the NATS accounts file
//! of a fleet, `demo` the README's first command (`run --devices 25 --ek mixed` unless
//! options are given).

use std::ffi::OsString;
use std::process::ExitCode;

const USAGE: &str = "\
usage: ekattest-fleet run  --devices N [options]   process fleet: swtpm devices, real daemons
       ekattest-fleet load --devices N [options]   software-TPM load generator
       ekattest-fleet demo [run options]           run --devices 25 --ek mixed
       ekattest-fleet build-agent --board NAME     cross-build the agent for boards/NAME.toml
       ekattest-fleet vm --board NAME --count N    boot N QEMU boards of NAME and attest them
       ekattest-fleet nats-users --agents FILE --passwords DIR
                                                   NATS accounts file: one user per device
       ekattest-fleet COMMAND --help               the command's options
       ekattest-fleet --version                    name, version and git commit";

fn main() -> ExitCode {
    let mut args: Vec<OsString> = std::env::args_os().skip(1).collect();
    if args.is_empty() {
        eprintln!("ekattest-fleet: missing command\n\n{USAGE}");
        return ExitCode::from(2);
    }
    let command = args.remove(0);
    match command.to_str() {
        Some("run") => ekattest_fleet::fleet::cli(args),
        Some("demo") => {
            if args.is_empty() {
                args = ["--devices", "25", "--ek", "mixed"]
                    .map(OsString::from)
                    .to_vec();
            }
            ekattest_fleet::fleet::cli(args)
        }
        Some("load") => ekattest_fleet::load::cli(args),
        Some("build-agent") => ekattest_fleet::boards::build::cli(args),
        Some("vm") => ekattest_fleet::vm::cli::cli(args),
        Some("nats-users") => ekattest_fleet::nats::users::cli(args),
        Some("-V" | "--version") => {
            println!("{}", ekattest_protocol::version_line!("ekattest-fleet"));
            ExitCode::SUCCESS
        }
        Some("-h" | "--help" | "help") => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("ekattest-fleet: unknown command {command:?}\n\n{USAGE}");
            ExitCode::from(2)
        }
    }
}
