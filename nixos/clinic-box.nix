# The clinic box appliance: a small x86_64 or aarch64 machine that runs the
# gateway unattended. Disk layout: a system partition and a persistent data
# partition (label yilian-data) that holds the spool, so a system image can
# be replaced without touching undelivered data.
{ config, lib, pkgs, ... }:

let
  bundleMount = "/run/yilian-bundle";
  identity = "/var/lib/yilian/identity";
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
  # Spool and identity live on the data partition.
  fileSystems."/var/lib/yilian" = {
    device = "/dev/disk/by-label/yilian-data";
    fsType = "ext4";
    options = [ "noatime" "data=ordered" ];
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
    # Reports back from the hospital, for the clinic's PCs to open.
    settings.reports = {
      path = "/srv/yilian/reports";
      "read only" = "yes";
      "guest ok" = "no";
    };
  };
  systemd.tmpfiles.rules = [
    "d /srv/yilian/drop/ecg 2770 root yilian-gateway -"
    # The service may write only under /srv/yilian (ProtectSystem=strict).
    "d /srv/yilian/reports 2750 yilian-gateway yilian-gateway -"
  ];

  services.yilian-gateway = {
    enable = true;
    # Central's address comes from the bundle's token at first boot.
    settings.folder = [
      { name = "ecg-share"; path = "/srv/yilian/drop/ecg"; lane = "clinical"; }
    ];
    settings.report_sink = [
      { name = "reports-folder"; type = "folder"; dir = "/srv/yilian/reports"; }
    ];
  };

  # First boot from a USB stick labelled YILIAN-BUNDLE holding the
  # `yilian-bundle/` directory that `yilian-provision bundle` writes (token,
  # fleet CA): the box enrolls with it, making its key here, and the
  # gateway starts with the identity in the state directory.
  systemd.services.yilian-bundle = {
    description = "Enroll this box from the Yilian bundle on a USB stick";
    wantedBy = [ "multi-user.target" ];
    before = [ "yilian-gateway.service" ];
    requiredBy = [ "yilian-gateway.service" ];
    wants = [ "network-online.target" ];
    after = [ "network-online.target" ];
    unitConfig.ConditionPathExists = "!${identity}/gateway.pem";
    path = [ pkgs.util-linux pkgs.coreutils config.services.yilian-gateway.package ];
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
      # Makes the key, sends the token to the central it names, and hands
      # the identity to the service user.
      yilian-gateway enroll --config /etc/yilian/gateway.toml \
        --bundle ${bundleMount}/yilian-bundle
      sync
    '';
  };
}
