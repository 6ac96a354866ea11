package main

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/arm"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/cloud"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
	"github.com/rs/zerolog"

	"jitaccess/handler/azurenet"
	"jitaccess/handler/funcs"
	"jitaccess/handler/httpapi"
	"jitaccess/handler/jit"
	"jitaccess/handler/portal"
	"jitaccess/handler/servicebus"
	"jitaccess/handler/tablestore"
)

// runFunctions serves the Functions host on FUNCTIONS_CUSTOMHANDLER_PORT,
// with Table Storage, Service Bus and Azure Resource Manager behind it.
func runFunctions(log zerolog.Logger, cfg settings) error {
	if cfg.Port == "" {
		return fmt.Errorf("FUNCTIONS_CUSTOMHANDLER_PORT is not set: the Functions host sets it; on a laptop use `handler local`")
	}
	if !cfg.SubscriptionsSet {
		// The default is the demo estate's: in Azure it would protect nothing
		// and say nothing.
		return fmt.Errorf("JIT_SUBSCRIPTIONS is not set: name the subscriptions whose VMs jitaccess protects")
	}
	if !cfg.AuthEnabled {
		// Every caller's identity and roles come from X-MS-CLIENT-PRINCIPAL,
		// which the platform strips from client requests and sets only while
		// App Service Authentication is on; without it anyone could send one.
		// App Service tells the app by setting WEBSITE_AUTH_ENABLED=True:
		// Microsoft.Identity.Web (AppServicesAuthenticationInformation.cs,
		// APPSERVICESAUTH_ENABLED_ENVIRONMENTVARIABLE) and Azure's
		// data-api-builder (issue #596, PR #1011) detect it the same way.
		return fmt.Errorf("App Service Authentication is not enabled (WEBSITE_AUTH_ENABLED is not True): " +
			"jitaccess takes callers' identities from X-MS-CLIENT-PRINCIPAL, which only the platform's authentication makes trustworthy; " +
			"turn on Authentication for the Function App with the Microsoft identity provider (infra/main.bicep's authsettingsV2 does) and restart it")
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	cloudCfg, err := cloudConfig(cfg.Cloud)
	if err != nil {
		return err
	}
	cred, err := credential(cfg, cloudCfg)
	if err != nil {
		return err
	}

	armOpts := &arm.ClientOptions{ClientOptions: azcore.ClientOptions{Cloud: cloudCfg}}
	if cfg.ARMEndpoint != "" {
		rm := cloudCfg.Services[cloud.ResourceManager]
		armOpts.Cloud = cloud.Configuration{ActiveDirectoryAuthorityHost: cloudCfg.ActiveDirectoryAuthorityHost,
			Services: map[cloud.ServiceName]cloud.ServiceConfiguration{cloud.ResourceManager: {Endpoint: cfg.ARMEndpoint, Audience: rm.Audience}}}
		// Only a loopback endpoint (the simulator in tests) may be plain HTTP.
		armOpts.InsecureAllowCredentialWithHTTP = strings.HasPrefix(cfg.ARMEndpoint, "http://127.0.0.1") || strings.HasPrefix(cfg.ARMEndpoint, "http://localhost")
	}
	network, err := azurenet.New(cfg.networkConfig(log), cred, armOpts)
	if err != nil {
		return err
	}

	tablesURL, tablesConn, err := cfg.functionsStorage(os.Getenv)
	if err != nil {
		return err
	}
	var store *tablestore.Store
	tcfg := tablestore.Config{TablePrefix: cfg.TablePrefix}
	if tablesURL != "" {
		store, err = tablestore.NewWithCredential(tablesURL, cred, tcfg)
	} else {
		store, err = tablestore.NewFromConnectionString(tablesConn, tcfg)
	}
	if err != nil {
		return fmt.Errorf("opening Table Storage: %w", err)
	}

	var sbClient interface{ Close(context.Context) error }
	var queue *servicebus.Queue
	switch {
	case cfg.ServiceBusNS != "":
		c, err := servicebus.NewClient(cfg.ServiceBusNS, cfg.ServiceBusAddr, cred)
		if err != nil {
			return err
		}
		sbClient = c
		queue, err = servicebus.New(c, cfg.Queue)
		if err != nil {
			return err
		}
	case cfg.ServiceBusConnStr != "":
		c, err := servicebus.NewClientFromConnectionString(cfg.ServiceBusConnStr)
		if err != nil {
			return err
		}
		sbClient = c
		queue, err = servicebus.New(c, cfg.Queue)
		if err != nil {
			return err
		}
	default:
		return fmt.Errorf("no Service Bus configured: set ServiceBusConnection__fullyQualifiedNamespace (managed identity) or ServiceBusConnection")
	}

	notifier, err := newNotifier(cfg)
	if err != nil {
		return err
	}
	svcCfg := cfg.serviceConfig(true, notifier, log)
	if cfg.ClientID != "" {
		// Resource events about NSG writes made as our own identity are
		// our writes echoed back.
		svcCfg.Self = []string{cfg.ClientID}
	}
	// The roles in order: the API queues on Service Bus, whose trigger
	// brings operations to the worker; the reconciler sweeps on the timer
	// and handles Event Grid's events.
	core := jit.NewCore(store, network, svcCfg)
	svc := jit.NewAPI(core, queue)
	worker := jit.NewApplier(core)
	rec := jit.NewReconciler(svc, worker)
	// The Functions host is the direct peer of every forwarded request.
	proxies := append([]netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128")}, cfg.TrustedProxies...)
	api := httpapi.New(svc, httpapi.Config{TrustedProxies: proxies, Log: log})
	portal.Mount(api)
	h := funcs.New(funcs.Config{API: api, Worker: worker, Reconciler: rec, DecodeOperation: servicebus.DecodeOperation,
		MaxDeliveries: cfg.MaxDeliveries, Log: log})

	ln, err := net.Listen("tcp", "127.0.0.1:"+cfg.Port)
	if err != nil {
		return fmt.Errorf("listening on FUNCTIONS_CUSTOMHANDLER_PORT %s: %w", cfg.Port, err)
	}
	log.Info().Str("listen", ln.Addr().String()).Str("queue", queue.Name()).Msg("jitaccess functions mode is up")
	return serveUntilDone(ctx, h, ln, functionsLimits, func(shutdown context.Context) {
		_ = queue.Close(shutdown)
		_ = sbClient.Close(shutdown)
	})
}

// cloudConfig maps JIT_CLOUD to the SDK's cloud configuration.
func cloudConfig(name string) (cloud.Configuration, error) {
	switch name {
	case "AzurePublic":
		return cloud.AzurePublic, nil
	case "AzureUSGovernment":
		return cloud.AzureGovernment, nil
	case "AzureChina":
		return cloud.AzureChina, nil
	}
	return cloud.Configuration{}, fmt.Errorf("JIT_CLOUD %q is not one of AzurePublic, AzureUSGovernment, AzureChina", name)
}

// credential is the app's managed identity (user-assigned when
// AZURE_CLIENT_ID is set) where the platform offers one, else the developer's
// own sign-in (Azure CLI, environment) for running Functions mode by hand.
func credential(cfg settings, c cloud.Configuration) (azcore.TokenCredential, error) {
	opts := azcore.ClientOptions{Cloud: c}
	if os.Getenv("IDENTITY_ENDPOINT") != "" || os.Getenv("MSI_ENDPOINT") != "" {
		mi := &azidentity.ManagedIdentityCredentialOptions{ClientOptions: opts}
		if cfg.ClientID != "" {
			mi.ID = azidentity.ClientID(cfg.ClientID)
		}
		cred, err := azidentity.NewManagedIdentityCredential(mi)
		if err != nil {
			return nil, fmt.Errorf("managed identity: %w", err)
		}
		return cred, nil
	}
	cred, err := azidentity.NewDefaultAzureCredential(&azidentity.DefaultAzureCredentialOptions{ClientOptions: opts})
	if err != nil {
		return nil, fmt.Errorf("no managed identity here and no developer sign-in: %w", err)
	}
	return cred, nil
}
