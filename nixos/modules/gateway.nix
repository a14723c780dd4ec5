# NixOS module for the Yilian clinic gateway.
{ config, lib, pkgs, ... }:

let
  inherit (lib) mkOption mkEnableOption mkIf types;
  cfg = config.services.yilian-gateway;
  format = pkgs.formats.toml { };

  # What the module decides; the admin's `settings` are merged over it.
  # The box's identity (key, certificate, fleet CA) lives in the state
  # directory, where `yilian-gateway enroll` writes it and every renewal
  # replaces it: /etc and the store are read-only to the service.
  baseSettings = {
    spool.dir = "/var/lib/yilian/spool";
    identity.dir = "/var/lib/yilian/identity";
    metrics.listen = "127.0.0.1:9464";
  } // lib.optionalAttrs (cfg.central != null) {
    uplink.central = cfg.central;
  };
  settings = lib.recursiveUpdate baseSettings cfg.settings;
  configFile = format.generate "gateway.toml" settings;
in
{
  options.services.yilian-gateway = {
    enable = mkEnableOption "the Yilian clinic gateway";

    package = mkOption {
      type = types.package;
      description = "The package providing bin/yilian-gateway.";
    };

    central = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "hub.county.example:4433";
      description = ''
        HOST:PORT of central. By default the address in the enrollment
        token, recorded in the state directory when the box enrolled.
      '';
    };

    settings = mkOption {
      type = format.type;
      default = { };
      example = {
        spool.quota = "20 GiB";
        folder = [ { name = "ecg-share"; path = "/srv/yilian/drop/ecg"; lane = "clinical"; } ];
      };
      description = ''
        gateway.toml settings, merged over the module's defaults (spool and
        identity in the state directory, metrics on loopback). Unknown keys
        are refused by the gateway at start.
      '';
    };

    socketBufferBytes = mkOption {
      type = types.int;
      default = 16777216;
      description = "net.core.rmem_max/wmem_max, so QUIC gets the UDP buffers it asks for.";
    };
  };

  config = mkIf cfg.enable {
    # The command line (status, items, ...) for admins on the machine.
    environment.systemPackages = [ cfg.package ];

    users.users.yilian-gateway = {
      isSystemUser = true;
      group = "yilian-gateway";
      extraGroups = [ "dialout" ];
      home = "/var/lib/yilian";
    };
    users.groups.yilian-gateway = { };

    boot.kernel.sysctl = {
      "net.core.rmem_max" = cfg.socketBufferBytes;
      "net.core.wmem_max" = cfg.socketBufferBytes;
    };

    # ModemManager probes new USB serial ports with AT commands, which
    # confuses analyzers and ECG carts: keep it away from them.
    services.udev.extraRules = ''
      ACTION=="add|change", SUBSYSTEM=="tty", KERNEL=="ttyUSB[0-9]*|ttyACM[0-9]*", ENV{ID_MM_DEVICE_IGNORE}="1"
    '';

    environment.etc."yilian/gateway.toml".source = configFile;

    systemd.services.yilian-gateway = {
      description = "Yilian clinic gateway";
      wantedBy = [ "multi-user.target" ];
      wants = [ "network-online.target" ];
      after = [ "network-online.target" ];
      restartTriggers = [ configFile ];
      # Sandboxing shared with the other Yilian service, then what is
      # particular to this one.
      serviceConfig = import ./hardening.nix // {
        Type = "notify";
        NotifyAccess = "main";
        ExecStart = "${cfg.package}/bin/yilian-gateway run --config /etc/yilian/gateway.toml";
        Restart = "always";
        RestartSec = "5s";
        WatchdogSec = "30s";
        TimeoutStartSec = "120s";
        TimeoutStopSec = "60s";
        User = "yilian-gateway";
        Group = "yilian-gateway";
        SupplementaryGroups = [ "dialout" ];
        StateDirectory = "yilian";
        StateDirectoryMode = "0700";
        ReadWritePaths = [ "-/srv/yilian" ];
        UMask = "0077";

        DevicePolicy = "closed";
        DeviceAllow = [ "char-ttyUSB rw" "char-ttyACM rw" "char-ttyS rw" ];
      };
    };
  };
}
