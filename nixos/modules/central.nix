# NixOS module for the Yilian central hub.
{ config, lib, pkgs, ... }:

let
  inherit (lib) mkOption mkEnableOption mkIf types;
  cfg = config.services.yilian-central;
  format = pkgs.formats.toml { };
  credentials = "/run/credentials/yilian-central.service";
  baseSettings = {
    server = {
      listen = "[::]:${toString cfg.port}";
      data_dir = "/var/lib/yilian-central";
    };
    tls = {
      ca = "${credentials}/ca.pem";
      cert = "${credentials}/central.pem";
      key = "${credentials}/central.key";
    };
    metrics.listen = "127.0.0.1:9465";
  };
  settings = lib.recursiveUpdate baseSettings cfg.settings;
  configFile = format.generate "central.toml" settings;
in
{
  options.services.yilian-central = {
    enable = mkEnableOption "the Yilian central hub";
    package = mkOption {
      type = types.package;
      description = "The package providing bin/yilian-central.";
    };
    port = mkOption {
      type = types.port;
      default = 4433;
      description = "UDP port of the QUIC listener.";
    };
    openFirewall = mkOption {
      type = types.bool;
      default = false;
      description = "Open the QUIC port to gateways.";
    };
    settings = mkOption {
      type = format.type;
      default = { };
      description = "central.toml settings, merged over the module's defaults.";
    };
    caFile = mkOption { type = types.str; description = "Fleet CA certificate (outside the Nix store)."; };
    certFile = mkOption { type = types.str; description = "Central's certificate (outside the Nix store)."; };
    keyFile = mkOption { type = types.str; description = "Central's private key, passed as a systemd credential."; };
  };

  config = mkIf cfg.enable {
    # The command line (status, items, ...) for admins on the machine.
    environment.systemPackages = [ cfg.package ];

    networking.firewall.allowedUDPPorts = lib.optionals cfg.openFirewall [ cfg.port ];
    boot.kernel.sysctl = {
      "net.core.rmem_max" = 16777216;
      "net.core.wmem_max" = 16777216;
    };
    environment.etc."yilian/central.toml".source = configFile;

    systemd.services.yilian-central = {
      description = "Yilian central hub";
      wantedBy = [ "multi-user.target" ];
      wants = [ "network-online.target" ];
      after = [ "network-online.target" ];
      restartTriggers = [ configFile ];
      # Sandboxing shared with the other Yilian service, then what is
      # particular to this one.
      serviceConfig = import ./hardening.nix // {
        Type = "notify";
        NotifyAccess = "main";
        ExecStart = "${cfg.package}/bin/yilian-central serve --config /etc/yilian/central.toml";
        Restart = "always";
        RestartSec = "5s";
        WatchdogSec = "30s";
        TimeoutStopSec = "60s";
        LoadCredential = [
          "ca.pem:${cfg.caFile}"
          "central.pem:${cfg.certFile}"
          "central.key:${cfg.keyFile}"
        ];
        DynamicUser = true;
        StateDirectory = "yilian-central";
        StateDirectoryMode = "0700";
        UMask = "0077";
        LimitNOFILE = 65536;
        PrivateDevices = true;
        DevicePolicy = "closed";
        PrivateUsers = true;
      };
    };
  };
}
