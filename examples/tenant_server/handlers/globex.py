# globex's handler looks for other tenants' data: it finds only its own.


def handle(request):
    store["visits"] = store.get("visits", 0) + 1
    return {
        "my_keys": store.keys(),          # the keys of globex's namespace only
        "hits": store.get("hits"),        # acme's "hits" is not among them
        "namespace": getattr(store, "namespace", "(not exposed)"),
    }
