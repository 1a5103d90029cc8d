// The eBPF program is the `firewall` binary (src/main.rs); this empty
// library only lets firewall-user depend on the crate so that cargo
// rebuilds the object when it changes (the aya-template arrangement).
#![no_std]
