# VM test (needs nixpkgs and KVM): central, a gateway, and an emulated ECG
# cart writing into the drop folder; the gateway VM's power is cut in the
# middle of the uploads; afterwards every file the gateway had taken (and
# so removed from the folder) is at central exactly once.
{ self, pkgs, ... }:

let
  provision = self.packages.${pkgs.system}.yilian-provision;
  pki = pkgs.runCommand "yilian-test-pki" { nativeBuildInputs = [ provision ]; } ''
    yilian-provision ca init --dir $out/ca
    yilian-provision cert issue --ca $out/ca --central-host central --out $out/central
    yilian-provision cert issue --ca $out/ca --gateway test/clinic/box-1 --out $out/gateway
  '';
in
{
  name = "yilian-power-cut";

  nodes.central = { ... }: {
    imports = [ self.nixosModules.central ];
    services.yilian-central = {
      enable = true;
      openFirewall = true;
      caFile = "${pki}/central/ca.pem";
      certFile = "${pki}/central/central.pem";
      keyFile = "${pki}/central/central.key";
    };
  };

  nodes.gateway = { ... }: {
    imports = [ self.nixosModules.gateway ];
    virtualisation.memorySize = 1024;
    services.yilian-gateway = {
      enable = true;
      central = "central:4433";
      # Fixed test certificates from the store (a real box enrolls and
      # keeps its identity in the state directory).
      settings.uplink = {
        ca = "${pki}/gateway/ca.pem";
        cert = "${pki}/gateway/gateway.pem";
        key = "${pki}/gateway/gateway.key";
      };
      settings.folder = [
        { name = "ecg-cart"; path = "/srv/yilian/drop/ecg"; lane = "clinical"; settle = "1s"; }
      ];
    };
    systemd.tmpfiles.rules = [ "d /srv/yilian/drop/ecg 0777 root root -" ];
  };

  testScript = ''
    start_all()
    central.wait_for_unit("yilian-central.service")
    gateway.wait_for_unit("yilian-gateway.service")

    # The cart writes 60 files of 2 MB, each under a temporary name first.
    gateway.succeed(
        "for i in $(seq 1 60); do "
        "head -c 2000000 /dev/urandom > /srv/yilian/drop/ecg/.f$i; "
        "mv /srv/yilian/drop/ecg/.f$i /srv/yilian/drop/ecg/ECG$i.SCP; done"
    )
    sums = dict(
        (line.split()[1].split("/")[-1], line.split()[0])
        for line in gateway.succeed("sha256sum /srv/yilian/drop/ecg/ECG*").splitlines()
    )

    # Cut the power once the gateway has taken some of them.
    gateway.wait_until_succeeds("test $(ls /srv/yilian/drop/ecg | wc -l) -le 40", timeout=120)
    taken = set(sums) - set(gateway.succeed("ls /srv/yilian/drop/ecg").split())
    gateway.crash()
    gateway.start()
    gateway.wait_for_unit("yilian-gateway.service")

    # Everything drains; whatever was taken before the cut is at central
    # exactly once, and so is every other file.
    gateway.wait_until_succeeds("test -z \"$(ls /srv/yilian/drop/ecg)\"", timeout=300)
    central.wait_until_succeeds(
        "test $(yilian-central items --config /etc/yilian/central.toml --json | wc -l) -eq 60",
        timeout=300,
    )
    import json
    items = [json.loads(l) for l in central.succeed(
        "yilian-central items --config /etc/yilian/central.toml --json"
    ).splitlines()]
    at_central = [i["sha256"] for i in items]
    for name, sha in sums.items():
        assert at_central.count(sha) == 1, f"{name} is at central {at_central.count(sha)} times"
    assert len(taken) > 0, "the cut must have happened after the gateway took files"
  '';
}
