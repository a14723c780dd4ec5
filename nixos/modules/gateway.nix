# NixOS module for the Yilian clinic gateway.
{ config, lib, pkgs, ... }:

let
  inherit (lib) mkOption mkEnableOption mkIf types;
  cfg = config.services.yilian-gateway;
  format = pkgs.formats.toml { };
  credentials = "/run/credentials/yilian-gateway.service";

  # What the module decides; the admin's `settings` are merged over it.
  baseSettings = {
    spool.dir = "/var/lib/yilian/spool";
    uplink = {
      central = cfg.central;
      ca = "${credentials}/ca.pem";
      cert = "${credentials}/gateway.pem";
      key = "${credentials}/gateway.key";
    };
    metrics.listen = "127.0.0.1:9464";
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
      type = types.str;
      example = "hub.county.example:4433";
      description = "HOST:PORT of central.";
    };

    settings = mkOption {
      type = format.type;
      default = { };
      example = {
        spool.quota_bytes = 21474836480;
        folder = [ { name = "ecg-share"; path = "/srv/yilian/drop/ecg"; lane = "clinical"; } ];
      };
      description = ''
        gateway.toml settings, merged over the module's defaults (spool in
        the state directory, TLS files from systemd credentials, metrics on
        loopback). Unknown keys are refused by the gateway at start.
      '';
    };

    caFile = mkOption {
      type = types.str;
      description = "Path (outside the Nix store) of the fleet CA certificate.";
    };
    certFile = mkOption {
      type = types.str;
      description = "Path (outside the Nix store) of this box's certificate.";
    };
    keyFile = mkOption {
      type = types.str;
      description = ''
        Path (outside the Nix store) of this box's private key. Handed to
        the service as a systemd credential; never copied into the store.
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
        LoadCredential = [
          "ca.pem:${cfg.caFile}"
          "gateway.pem:${cfg.certFile}"
          "gateway.key:${cfg.keyFile}"
        ];

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
