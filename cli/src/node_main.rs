//! `vane-node`: a data-plane node, the same as `vane proxy`, in a smaller binary.

fn main() -> std::process::ExitCode {
    vane::node_main()
}
