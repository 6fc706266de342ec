# initech's handler never returns: the server interrupts it and answers 504.


def handle(request):
    while True:
        pass
