# acme's handler: counts requests and remembers the last body posted.
# `store` is acme's own key-value store; `request` is this request, as a dict.


def handle(request):
    hits = store.get("hits", 0) + 1
    store["hits"] = hits
    if request["method"] == "POST":
        store["last_body"] = request["body"]
    return {"tenant": "acme", "hits": hits, "path": request["path"], "last_body": store.get("last_body")}
