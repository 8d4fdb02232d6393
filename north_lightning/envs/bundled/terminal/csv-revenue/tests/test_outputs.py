def test_total():
    with open("/app/total.txt") as f:
        assert int(float(f.read().strip())) == 12 * 3 + 5 * 7 + 2 * 15 + 1 * 40 + 6 * 9 + 9 * 4
