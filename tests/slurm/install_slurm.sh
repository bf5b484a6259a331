#!/usr/bin/env bash
# Install a single-node SLURM (Debian slurm-wlm + munge) for the SLURM tests
# (tests/slurm/local_slurm.py starts it). Idempotent; always exits 0: where the
# packages cannot be installed it says why, and those tests skip saying so.
set -u
PKGS="slurmctld slurmd slurm-client munge"
have_all() { for c in slurmctld slurmd sinfo munged; do command -v "$c" >/dev/null || return 1; done; }
say() { echo "install_slurm: $*"; exit 0; }

have_all && say "SLURM and munge already installed, nothing to do."
command -v apt-get >/dev/null || say "apt-get not found; cannot install $PKGS (SLURM tests will skip)."
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    sudo -n true 2>/dev/null || say "not root and no passwordless sudo; cannot install $PKGS (SLURM tests will skip)."
    SUDO="sudo -n"
fi
# refresh the package lists only if the first try fails
apt() { $SUDO env DEBIAN_FRONTEND=noninteractive apt-get "$@" -y -q; }
apt install --no-install-recommends $PKGS || { apt update && apt install --no-install-recommends $PKGS; } \
    || say "apt-get failed (no network?); SLURM tests will skip."
have_all && say "installed $PKGS."
say "install finished but slurmctld/slurmd/sinfo/munged are still not all there; SLURM tests will skip."
