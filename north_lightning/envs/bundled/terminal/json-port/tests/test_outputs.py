def test_port():
    with open("/app/port.txt") as f:
        assert f.read().strip() == "8472"
