{
  description = "Yilian: clinic edge gateway and central hub for a regional medical alliance";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs = { self, nixpkgs }:
    let
      systems = [ "x86_64-linux" "aarch64-linux" ];
      forAll = f: nixpkgs.lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
      yilian = pkgs: pkgs.rustPlatform.buildRustPackage {
        pname = "yilian";
        version = "0.1.0";
        src = nixpkgs.lib.cleanSource ./.;
        cargoLock.lockFile = ./Cargo.lock;
        cargoBuildFlags = [ "-p" "yilian-gateway" "-p" "yilian-central" "-p" "yilian-provision" ];
        # The test suite drives real peers (dcmtk, Prometheus, network
        # namespaces); it runs in CI, not in the sandbox.
        doCheck = false;
        meta.mainProgram = "yilian-gateway";
      };
      withPackage = name: module: { pkgs, lib, ... }: {
        imports = [ module ];
        services.${name}.package = lib.mkDefault self.packages.${pkgs.stdenv.hostPlatform.system}.yilian;
      };
    in
    {
      packages = forAll (pkgs: rec {
        yilian = yilian pkgs;
        yilian-gateway = yilian;
        yilian-central = yilian;
        yilian-provision = yilian;
        default = yilian;
      });

      nixosModules = {
        gateway = withPackage "yilian-gateway" ./nixos/modules/gateway.nix;
        central = withPackage "yilian-central" ./nixos/modules/central.nix;
      };

      nixosConfigurations.clinic-box = nixpkgs.lib.nixosSystem {
        system = "x86_64-linux";
        modules = [
          ./nixos/clinic-box.nix
          ({ pkgs, lib, ... }: {
            services.yilian-gateway.package = lib.mkDefault self.packages.${pkgs.stdenv.hostPlatform.system}.yilian;
          })
        ];
      };

      checks = forAll (pkgs: {
        power-cut = pkgs.testers.runNixOSTest (import ./nixos/tests/power-cut.nix { inherit self pkgs; });
      });
    };
}
