fn main() {
    print!("{}", barge::api::crds_yaml());
}
