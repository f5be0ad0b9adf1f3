//! The `vane` command. Everything lives in the library so tests can reuse its parts.

fn main() -> std::process::ExitCode {
    vane::main()
}
