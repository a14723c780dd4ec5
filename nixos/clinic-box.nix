# The clinic box appliance: a small x86_64 or aarch64 machine that runs the
# gateway unattended. Disk layout: a system partition and a persistent data
# partition (label yilian-data) that holds the spool, so a system image can
# be replaced without touching undelivered data.
{ config, lib, pkgs, ... }:

let
  bundleMount = "/run/yilian-bundle";
  secrets = "/var/lib/yilian-secrets";
in
{
  imports = [ ./modules/gateway.nix ];

  system.stateVersion = "25.11";
  boot.loader.systemd-boot.enable = lib.mkDefault true;
  boot.loader.efi.canTouchEfiVariables = lib.mkDefault true;

  fileSystems."/" = lib.mkDefault {
    device = "/dev/disk/by-label/nixos";
    fsType = "ext4";
  };
  fileSystems."/boot" = lib.mkDefault {
    device = "/dev/disk/by-label/boot";
    fsType = "vfat";
  };
  # Spool, secrets and drop folders live on the data partition.
  fileSystems."/var/lib/yilian" = {
    device = "/dev/disk/by-label/yilian-data";
    fsType = "ext4";
    options = [ "noatime" "data=ordered" ];
  };
  fileSystems.${secrets} = {
    device = "/var/lib/yilian/.secrets";
    options = [ "bind" ];
    depends = [ "/var/lib/yilian" ];
  };

  networking.hostName = lib.mkDefault "clinic-box";
  networking.useDHCP = lib.mkDefault true;
  # Only the clinic-side device ports: DICOM, HL7 MLLP, and the SMB share
  # that ECG carts write their files into. Metrics stay on loopback; the
  # box reports them to central over its own link.
  networking.firewall = {
    enable = true;
    allowedTCPPorts = [ 11112 2575 445 ];
  };
  networking.modemmanager.enable = false;
  services.openssh.enable = false;

  services.samba = {
    enable = true;
    settings.ecg = {
      path = "/srv/yilian/drop/ecg";
      "read only" = "no";
      "guest ok" = "no";
      "force group" = "yilian-gateway";
      "create mask" = "0660";
    };
  };
  systemd.tmpfiles.rules = [
    "d /srv/yilian/drop/ecg 2770 root yilian-gateway -"
    "d ${secrets} 0700 root root -"
  ];

  services.yilian-gateway = {
    enable = true;
    caFile = "${secrets}/ca.pem";
    certFile = "${secrets}/gateway.pem";
    keyFile = "${secrets}/gateway.key";
    # Overridden by the bundle's central address at first boot, see below.
    central = lib.mkDefault "hub.county.example:4433";
    settings.folder = [
      { name = "ecg-share"; path = "/srv/yilian/drop/ecg"; lane = "clinical"; }
    ];
  };

  # First boot from a USB stick labelled YILIAN-BUNDLE holding the output
  # of `yilian-provision cert issue --gateway ... --out`: ca.pem,
  # gateway.pem, gateway.key. Copied once onto the data partition; the
  # gateway waits for them.
  systemd.services.yilian-bundle = {
    description = "Install the Yilian provisioning bundle from USB";
    wantedBy = [ "multi-user.target" ];
    before = [ "yilian-gateway.service" ];
    requiredBy = [ "yilian-gateway.service" ];
    unitConfig.ConditionPathExists = "!${secrets}/gateway.key";
    path = [ pkgs.util-linux pkgs.coreutils ];
    serviceConfig = {
      Type = "oneshot";
      RemainAfterExit = true;
    };
    script = ''
      set -eu
      dev=/dev/disk/by-label/YILIAN-BUNDLE
      for i in $(seq 1 60); do [ -e "$dev" ] && break; sleep 5; done
      [ -e "$dev" ] || { echo "no YILIAN-BUNDLE stick found; insert it and restart yilian-bundle" >&2; exit 1; }
      mkdir -p ${bundleMount}
      mount -o ro "$dev" ${bundleMount}
      trap 'umount ${bundleMount}' EXIT
      for f in ca.pem gateway.pem gateway.key; do
        install -m 0600 -o root -g root ${bundleMount}/$f ${secrets}/$f.new
      done
      sync
      for f in ca.pem gateway.pem gateway.key; do mv ${secrets}/$f.new ${secrets}/$f; done
      sync
      echo "provisioning bundle installed"
    '';
  };
}
